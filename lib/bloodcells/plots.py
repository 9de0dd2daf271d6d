"""Figures shared by the notebooks. Each function draws one figure and returns it."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from PIL import Image

from bloodcells.paths import CLASSES


def class_counts_bar(manifest: pd.DataFrame) -> plt.Figure:
    """Images per class, stacked by split."""
    table = manifest.groupby(["class", "split"]).size().unstack(fill_value=0).reindex(list(CLASSES))
    table = table[[s for s in ("train", "val", "test") if s in table.columns]]
    fig, ax = plt.subplots(figsize=(9, 4))
    table.plot.bar(stacked=True, ax=ax, color=sns.color_palette("deep", len(table.columns)))
    ax.set_xlabel("")
    ax.set_ylabel("images")
    ax.set_title("Images per class and split (after cleaning)")
    for i, total in enumerate(table.sum(axis=1)):
        ax.text(i, total, str(total), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return fig


def sample_grid(manifest: pd.DataFrame, raw_dir: Path, per_class: int = 6, seed: int = 0):
    """A grid of randomly drawn cells, one row per class."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(
        len(CLASSES), per_class, figsize=(per_class * 1.4, len(CLASSES) * 1.45)
    )
    for r, cls in enumerate(CLASSES):
        paths = manifest.loc[manifest["class"] == cls, "path"].to_numpy()
        chosen = rng.choice(paths, size=min(per_class, len(paths)), replace=False)
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(chosen):
                with Image.open(raw_dir / chosen[c]) as im:
                    ax.imshow(im.convert("RGB"))
        axes[r][0].set_title(cls, loc="left", fontsize=9)
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame, title: str = "") -> plt.Figure:
    """Loss and accuracy per epoch, training and validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = np.arange(1, len(history) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for col, style in ((metric, "-o"), (f"val_{metric}", "--o")):
            if col in history:
                ax.plot(epochs, history[col].to_numpy(), style, label=col, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrices(test: dict, title: str = "") -> plt.Figure:
    """Confusion matrix on the test split: counts and row-normalised (recall per class)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    kinds = (
        ("confusion_matrix", "d", "counts"),
        ("confusion_matrix_normalized", ".2f", "row-normalised"),
    )
    for ax, (key, fmt, name) in zip(axes, kinds, strict=True):
        sns.heatmap(
            np.array(test[key]),
            annot=True,
            fmt=fmt,
            cmap="Blues",
            cbar=False,
            xticklabels=CLASSES,
            yticklabels=CLASSES,
            ax=ax,
            annot_kws={"size": 7},
        )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} {name}".strip())
    fig.tight_layout()
    return fig


def embedding_maps(maps: dict[str, tuple[np.ndarray, np.ndarray]]) -> plt.Figure:
    """2-D embeddings side by side, points coloured by class."""
    fig, axes = plt.subplots(1, len(maps), figsize=(6 * len(maps), 5.5), squeeze=False)
    palette = sns.color_palette("tab10", len(CLASSES))
    for ax, (name, (xy, labels)) in zip(axes[0], maps.items(), strict=True):
        for i, cls in enumerate(CLASSES):
            pts = xy[labels == i]
            ax.scatter(pts[:, 0], pts[:, 1], s=4, color=palette[i], label=cls, alpha=0.7)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(markerscale=3, fontsize=8, loc="best")
    fig.tight_layout()
    return fig
