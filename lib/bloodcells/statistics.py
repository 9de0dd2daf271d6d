"""Paired comparisons of models scored on the same images: McNemar's exact test, Holm's
correction, and the paired bootstrap CI of an accuracy difference. No study code: a report
that uses them depends on this file and nothing else of the comparison's."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def paired_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Accuracy of A minus accuracy of B on the same images, and its percentile bootstrap
    CI (the images resampled, A and B together, so what both get right or wrong cancels).
    ``correct_*`` is (images,) or (seeds, images): with seeds, the difference is the mean
    over seeds, each seed of A paired with the same seed of B."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=float))
    b = np.atleast_2d(np.asarray(correct_b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"Paired correctness of different shapes: {a.shape} and {b.shape}.")
    per_image = (a - b).mean(axis=0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_image), size=(n_bootstrap, len(per_image)))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    lo, hi = np.percentile(per_image[idx].mean(axis=1), q)
    return float(per_image.mean()), float(lo), float(hi)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test on paired correctness: (a right/b wrong, a wrong/b right, p)."""
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control)."""
    order = np.argsort(pvalues)
    m = len(pvalues)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * pvalues[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()
