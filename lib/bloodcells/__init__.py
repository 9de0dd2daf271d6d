"""bloodcells: the shared code of a reproducible study of blood-cell image classification."""

__version__ = "0.1.0"
