"""What the models look at: SmoothGrad saliency, and the most confident mistakes."""

from __future__ import annotations

import numpy as np

from bloodcells.paths import CLASSES


def saliency(
    model,
    images: np.ndarray,
    classes: np.ndarray,
    samples: int = 8,
    noise: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """SmoothGrad: |d score / d pixel| averaged over noisy copies, max over channels.

    Works on any model of the study (pixels in, probabilities out), whatever its backbone.
    Returns one map per image, scaled to [0, 1].
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = images.astype(np.float32)
    total = np.zeros(x.shape[:3], dtype=np.float32)
    for _ in range(samples):
        noisy = tf.convert_to_tensor(x + rng.normal(0, noise * 255, x.shape).astype(np.float32))
        with tf.GradientTape() as tape:
            tape.watch(noisy)
            probs = model(noisy, training=False)
            score = tf.reduce_sum(tf.gather(probs, classes, axis=1, batch_dims=1))
        total += np.abs(tape.gradient(score, noisy).numpy()).max(axis=-1)
    lo = total.min(axis=(1, 2), keepdims=True)
    hi = total.max(axis=(1, 2), keepdims=True)
    return (total - lo) / np.maximum(hi - lo, 1e-12)


def confident_correct_per_class(y: np.ndarray, probs: np.ndarray) -> list[int]:
    """For each class, the test image classified right with the highest confidence."""
    pred = probs.argmax(axis=1)
    picks = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero((y == c) & (pred == c))
        if len(idx):
            picks.append(int(idx[probs[idx, c].argmax()]))
    return picks


def confident_errors(y: np.ndarray, probs: np.ndarray, n: int = 12) -> list[int]:
    """Test images classified wrong, the most confident mistakes first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    return wrong[np.argsort(-probs[wrong].max(axis=1))][:n].tolist()
