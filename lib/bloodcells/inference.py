"""A model's class probabilities for a batch of uint8 images: the one inference path.

Training (each run's validation and test predictions), the studies, the comparison, the
champion's test-time augmentation, the shift benchmark, the benchmark command and the
``bloodcells-predict`` command all call :func:`predict_proba`.
"""

from __future__ import annotations

import time

import numpy as np


def feed(model, batch: np.ndarray):
    """The batch in the input structure the model was built with (a one-input list for the
    exported models), so Keras does not warn that the structures differ."""
    return [batch] if isinstance(getattr(model, "input", None), list) else batch


def predict_proba(model, x: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, float]:
    """Class probabilities for uint8 images (N, H, W, 3), and inference throughput in
    images/s; ``x`` may be memory-mapped (read ``batch_size`` images at a time)."""
    import tensorflow as tf

    t0 = time.perf_counter()
    probs = []
    for start in range(0, len(x), batch_size):
        batch = tf.convert_to_tensor(np.asarray(x[start : start + batch_size]))
        probs.append(np.asarray(model(feed(model, batch), training=False)))
    seconds = time.perf_counter() - t0
    return np.concatenate(probs), (len(x) / seconds if seconds else 0.0)
