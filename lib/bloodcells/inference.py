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


#: pixels per inference batch: 256 images at 64 px. Activations grow with the batch's pixels,
#: so a fixed image count that is cheap at 32 px needs tens of GB at 224 px (DenseNet-201).
BATCH_PIXELS = 256 * 64 * 64


def batch_size_for(x: np.ndarray, pixels: int = BATCH_PIXELS, most: int = 256) -> int:
    """Images per inference batch for images shaped like ``x`` (N, H, W, C): ``pixels`` per
    batch, at least 1 and at most ``most`` images."""
    height, width = x.shape[1:3]
    return max(1, min(most, pixels // (int(height) * int(width))))


#: inputs of at least this many batches are predicted through one traced graph
#: (``tf.function``) instead of layer by layer: 1.3x the throughput of the 96 px CNN
#: (docs/decisions/029). Tracing costs 0.2 s for that CNN and about 8 s for DenseNet-201 at
#: 224 px, so short inputs (the smoke profile's, a few shifted images) stay eager.
TRACE_FROM_BATCHES = 8


def predict_proba(
    model, x: np.ndarray, batch_size: int | None = None, traced: bool | None = None
) -> tuple[np.ndarray, float]:
    """Class probabilities for uint8 images (N, H, W, 3), and inference throughput in
    images/s (tracing included); ``x`` may be memory-mapped (read ``batch_size`` images at a
    time, by default :func:`batch_size_for` the images' size). ``traced``: through one
    ``tf.function`` traced for any batch size, or eagerly; by default traced when ``x``
    makes at least :data:`TRACE_FROM_BATCHES` batches."""
    import tensorflow as tf

    batch_size = batch_size or batch_size_for(x)
    starts = range(0, len(x), batch_size)
    if traced is None:
        traced = len(starts) >= TRACE_FROM_BATCHES

    def call(batch):
        return model(feed(model, batch), training=False)

    if traced:  # one signature for every batch, the last and shorter one too: one trace
        spec = tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))
        call = tf.function(call, input_signature=[spec])
    t0 = time.perf_counter()
    probs = []
    for start in starts:
        batch = tf.convert_to_tensor(np.asarray(x[start : start + batch_size]))
        probs.append(np.asarray(call(batch)))
    seconds = time.perf_counter() - t0
    return np.concatenate(probs), (len(x) / seconds if seconds else 0.0)
