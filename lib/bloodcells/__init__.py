"""bloodcells: the shared code of a reproducible study of blood-cell image classification."""

import os

# TensorFlow reads this once, when it is first imported, and every entry point (stages,
# notebooks, commands, tests) imports this package first. TensorFlow turns its oneDNN
# kernels on by itself only on CPUs with AVX-512 VNNI, BF16 or AMX; on a 2-core AVX2 CPU
# (the reference machine) they train ResNet-50 2.8x and VGG-16 2x faster than its default
# kernels, with the same bytes on every rerun under op determinism (decision 021). Set it
# to 0 in the environment to measure without them.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow's C++ log level, read at the same moment: 3 keeps its native chatter (CUDA
# probing on a machine without a GPU, oneDNN notices) out of every command's console, stage
# log and notebook kernel, which inherits this environment. Real failures still raise in
# Python. Set it lower in the environment to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
