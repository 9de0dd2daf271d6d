"""A model's class probabilities for a batch of uint8 images: the one inference path.

Training (each run's validation and test predictions), the studies, the comparison, the
champion's test-time augmentation, the shift benchmark, the benchmark command and the
``bloodcells-predict`` command all call :func:`predict_proba`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


@contextmanager
def native_logs_held() -> Iterator[None]:
    """Hold what native code writes to the process's stderr (file descriptor 2) while the
    block runs: TensorFlow's start-up lines (absl's notice, oneDNN, CUDA probing) are
    written there by C++ before Python can configure logging, and no environment variable
    stops all of them. Shown only when the block fails; a command's console stays clean."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


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
