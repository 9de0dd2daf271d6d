"""A command's console: what native libraries write to stderr, held back."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


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
