"""The one evaluation function and the one metrics writer.

:func:`evaluate` turns true labels and predicted probabilities into every number the
study reports for a model: accuracy, balanced accuracy, macro and weighted
precision/recall/F1, a per-class table, the confusion matrix (counts and row-normalised),
bootstrap 95% confidence intervals for accuracy and macro-F1, and the expected calibration
error. :func:`provenance` says where a number came from.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from bloodcells.config import params_hash
from bloodcells.paths import CLASSES
from bloodcells.timing import run_provenance


def confidence_bins(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Predictions binned by confidence (``n_bins`` equal bins of [0, 1], right-closed):
    per non-empty bin its mean confidence, accuracy and count. The one binning behind the
    ECE and the reliability curves."""
    conf = np.asarray(y_prob).max(axis=1)
    correct = (np.asarray(y_prob).argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    return [
        {
            "confidence": float(conf[bins == b].mean()),
            "accuracy": float(correct[bins == b].mean()),
            "count": int((bins == b).sum()),
        }
        for b in range(n_bins)
        if (bins == b).any()
    ]


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 15) -> float:
    """ECE: bin predictions by confidence; average |accuracy - confidence| weighted by bin size."""
    rows = confidence_bins(y_true, y_prob, n_bins)
    n = sum(r["count"] for r in rows)
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows))


def _macro_f1_from_counts(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 of a stack of confusion matrices (B x K x K)."""
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(float)
    fp = cm.sum(axis=1) - tp
    fn = cm.sum(axis=2) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(axis=1)


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap CIs of accuracy and macro-F1 over resampled test images."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    correct = (y_true == y_pred)[idx]
    acc = correct.mean(axis=1)
    codes = (y_true * n_classes + y_pred)[idx]
    offsets = (np.arange(n_bootstrap) * n_classes * n_classes)[:, None]
    counts = np.bincount((codes + offsets).ravel(), minlength=n_bootstrap * n_classes**2)
    f1 = _macro_f1_from_counts(counts.reshape(n_bootstrap, n_classes, n_classes))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {
        "accuracy": [float(v) for v in np.percentile(acc, q)],
        "macro_f1": [float(v) for v in np.percentile(f1, q)],
    }


def evaluate(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    classes: tuple[str, ...] = CLASSES,
    n_bootstrap: int = 1000,
    ece_bins: int = 15,
    seed: int = 0,
) -> dict:
    """Every reported number for one model on one labelled set."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_prob).argmax(axis=1)
    labels = list(range(len(classes)))
    out: dict = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=avg, zero_division=0
        )
        out.update({f"{avg}_precision": float(p), f"{avg}_recall": float(r), f"{avg}_f1": float(f)})
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    out["per_class"] = {
        c: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, c in enumerate(classes)
    }
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    rows = cm.sum(axis=1, keepdims=True)
    out["confusion_matrix"] = cm.tolist()
    out["confusion_matrix_normalized"] = (
        np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0).round(4).tolist()
    )
    out["ci95"] = bootstrap_ci(y_true, y_pred, len(classes), n_bootstrap, seed)
    out["ece"] = expected_calibration_error(y_true, np.asarray(y_prob), ece_bins)
    return out


def provenance(params: dict, data_hash: str) -> dict:
    """Where a number came from: code, params, data, libraries and machine."""
    return {
        "params_hash": params_hash(params),
        "profile": params.get("profile"),
        "data_hash": data_hash,
        **run_provenance(),
    }
