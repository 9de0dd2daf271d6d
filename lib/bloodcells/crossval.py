"""The paper's Table 1: stratified k-fold cross-validation with SMOTE, a study of its own.

The ``cross-validation`` stage (``python -m bloodcells.crossval``) runs it from the params
section ``cross_validation``: which family's recipe (``family``), how many folds, epochs,
image size, CNN widths, the oversampling inside the training folds (``balance``), and
the inner validation share that picks each fold's epoch (``inner_val``). The result is
``models/cross_validation/cv.json`` (keyed: a rerun for another reason reuses it) and the
metrics file ``metrics/cross_validation.json``; notebook 14 reports it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bloodcells.experiment import (
    best_epoch,
    held_out_scores,
    keyed,
    load_splits,
    source_hash,
    study_config,
    train_arrays,
    training_key,
)
from bloodcells.inference import predict_proba
from bloodcells.paths import manifest_path, project_root, resolve

SECTION = "cross_validation"


def training_part(size: int, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train and val splits together (the paper's 70%), with each row's CV fold."""
    from bloodcells.preprocess import read_manifest

    data = load_splits(size, root)
    manifest = read_manifest(manifest_path(root))
    folds = np.concatenate(
        [manifest.loc[manifest["split"] == s, "fold"].to_numpy() for s in ("train", "val")]
    )
    x = np.concatenate([np.asarray(data["train"][0]), np.asarray(data["val"][0])])
    y = np.concatenate([data["train"][1], data["val"][1]])
    return x, y, folds


def inner_split(
    y: np.ndarray, part: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Masks (fit, inner validation) over ``y``: of the rows in ``part``, a ``fraction`` of
    each class (at least one image of every class with two or more) held out for choosing
    the epoch, drawn with ``seed``; rows outside ``part`` are in neither."""
    rng = np.random.default_rng(seed)
    inner = np.zeros(len(y), bool)
    for label in np.unique(y[part]):
        rows = np.flatnonzero(part & (y == label))
        take = max(1, round(fraction * len(rows))) if len(rows) >= 2 else 0
        inner[rng.choice(rows, take, replace=False)] = True
    return part & ~inner, inner


def cross_validate(params: dict, root: Path | None = None) -> dict:
    """Stratified k-fold CV over the training part (the paper's Table 1).

    Each fold trains on the other folds (oversampled with ``balance`` — SMOTE in the paper —
    inside the training folds only), picks its epoch on an inner validation split of those
    training folds (``inner_val``, stratified), and scores its held-out fold once: the
    held-out fold steers nothing.
    """
    root = root or project_root()
    study = params[SECTION]
    cfg = study_config(params, SECTION, balance=study["balance"])
    n_folds = int(study["folds"])
    inner_val = float(study["inner_val"])

    def compute() -> dict:
        x, y, folds = training_part(cfg.image_size, root)
        available = int(folds.max()) + 1
        if n_folds > available:
            raise ValueError(
                f"Params key '{SECTION}.folds' is {n_folds}, but the manifest has "
                f"{available} folds ('preprocess.n_folds'); lower it or rerun preprocess."
            )
        rows = []
        for k in range(n_folds):
            held = folds == k
            fit, inner = inner_split(y, ~held, inner_val, cfg.seed + k)
            result = train_arrays(
                SECTION, f"fold{k}", cfg, (x[fit], y[fit]), (x[inner], y[inner]), root
            )
            probs, _ = predict_proba(result.model, x[held])
            rows.append(
                {
                    "fold": k,
                    **held_out_scores(y[held], probs),
                    "best_epoch": best_epoch(result.history),
                    "train_images": result.train_size,
                    "inner_val_images": int(inner.sum()),
                }
            )
        acc = np.array([r["accuracy"] for r in rows])
        f1 = np.array([r["macro_f1"] for r in rows])
        return {
            "folds": rows,
            "accuracy_mean": float(acc.mean()),
            "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "macro_f1_mean": float(f1.mean()),
            "macro_f1_sd": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
            "family": study["family"],
            "image_size": cfg.image_size,
            "epochs": cfg.epochs,
            "balance": cfg.balance,
            "conv_widths": cfg.conv_widths,
            "inner_val": inner_val,
        }

    tkey = training_key(
        cfg, root, study="cv", folds=n_folds, inner_val=inner_val, code=source_hash(__file__)
    )
    return keyed(resolve(Path("models") / SECTION / "cv.json", root), tkey, compute)


def main(argv: list[str] | None = None) -> int:
    from bloodcells.timing import timed_stage

    result, _ = timed_stage(argv, __doc__, SECTION, cross_validate, metrics=True)
    print(
        f"cross-validation: {len(result['folds'])} folds, accuracy "
        f"{100 * result['accuracy_mean']:.2f} ± {100 * result['accuracy_sd']:.2f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
