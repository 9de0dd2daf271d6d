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


def forest_plot(table: pd.DataFrame) -> plt.Figure:
    """Test accuracy with its 95% CI per model, best at the top."""
    df = table.sort_values("test acc.")
    lo = df["95% CI"].str.strip("[]").str.split(", ").str[0].astype(float)
    hi = df["95% CI"].str.strip("[]").str.split(", ").str[1].astype(float)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(df) + 1.2))
    y = np.arange(len(df))
    ax.errorbar(
        df["test acc."], y, xerr=[df["test acc."] - lo, hi - df["test acc."]], fmt="o", capsize=3
    )
    ax.set_yticks(y, df.index)
    ax.set_xlabel("test accuracy (%), 95% bootstrap CI")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def recall_heatmap(recalls: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(recalls) + 1.5))
    sns.heatmap(
        recalls, annot=True, fmt=".2f", cmap="RdYlGn", vmin=0, vmax=1, ax=ax, annot_kws={"size": 7}
    )
    ax.set_title("recall per class on the test split")
    fig.tight_layout()
    return fig


def reliability_diagrams(curves: dict[str, pd.DataFrame]) -> plt.Figure:
    n = len(curves)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, curve) in zip(axes.ravel(), curves.items(), strict=False):
        ax.axis("on")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.plot(curve["confidence"], curve["accuracy"], "o-", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    fig.tight_layout()
    return fig


def image_rows(images: np.ndarray, maps: np.ndarray | None, titles: list[str]) -> plt.Figure:
    """Images (and, when given, their saliency maps overlaid), one per column."""
    n = len(images)
    rows = 2 if maps is not None else 1
    fig, axes = plt.subplots(rows, n, figsize=(1.9 * n, 2.1 * rows), squeeze=False)
    for i in range(n):
        axes[0][i].imshow(images[i])
        axes[0][i].set_title(titles[i], fontsize=7)
        axes[0][i].axis("off")
        if maps is not None:
            axes[1][i].imshow(images[i])
            axes[1][i].imshow(maps[i], cmap="jet", alpha=0.5)
            axes[1][i].axis("off")
    fig.tight_layout()
    return fig


def shift_strip(views: dict[str, list[np.ndarray]], severities: list[int]) -> plt.Figure:
    """One image under each shift (rows) at severity 0 (clean) and each severity (columns)."""
    rows, cols = len(views), len(severities) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.5 * rows), squeeze=False)
    for r, (name, images) in enumerate(views.items()):
        for c, image in enumerate(images):
            axes[r][c].imshow(image)
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(
                    "clean" if c == 0 else f"severity {severities[c - 1]}", fontsize=8
                )
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def shift_heatmap(table: pd.DataFrame, value: str = "accuracy") -> plt.Figure:
    """Accuracy (%) per model (rows) and shift x severity (columns), clean first."""
    data = table.assign(column=table["shift"] + " " + table["severity"].astype(str))
    order = list(dict.fromkeys(data["column"]))
    grid = 100 * data.pivot(index="model", columns="column", values=value)[order]
    grid = grid.rename(columns={"none 0": "clean"})
    fig, ax = plt.subplots(figsize=(0.45 * len(order) + 3, 0.45 * len(grid) + 2))
    label = f"{value.replace('_', ' ')} %"
    sns.heatmap(grid, annot=True, fmt=".0f", cmap="viridis", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": label}, annot_kws={"fontsize": 7})  # fmt: skip
    ax.set_xlabel("shift and severity")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig
