"""The paper's "without / with shuffling", as its code ran it: a study of its own.

What the original notebooks did (``shared/docs/seed-code.md``): Loader A read the class
folders one after another, so the arrays were class-contiguous. **Without shuffling**:
``train_test_split(X, y, test_size=0.3, random_state=42, stratify=y)``, whose default
``shuffle=True`` already mixes the classes, then ``model.fit(validation_split=0.2)``, which
validates on the *last* 20% of those (mixed) training arrays. **With shuffling**: the same
after a pre-shuffle of the arrays (seeded in one notebook, unseeded in others), so the
fixed ``random_state`` now draws *another* split: other test images, other validation
images. No condition ever trained on class-sorted arrays.

So the gap between the two conditions is the difference between two random splits (and
two training runs), plus whatever else a notebook changed at the same time. This study
measures that difference directly: for each seed, "without" trains on the one unshuffled
split (training seed = the seed) and "with" pre-shuffles with the seed first; the paired
differences give the split-to-split distribution that every gap of the paper's Tables 2
and 3 is compared with (:func:`bloodcells.report.shuffling_gaps`).

The ``shuffling`` stage (``python -m bloodcells.shuffling``) runs it from the params
section ``shuffling``; the result is ``models/shuffling/shuffling.json`` (keyed) and
``metrics/shuffling.json``; notebook 14 reports it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from bloodcells.experiment import (
    keyed,
    load_splits,
    source_hash,
    study_config,
    train_arrays,
    training_key,
)
from bloodcells.inference import predict_proba
from bloodcells.paths import manifest_path, project_root, resolve

SECTION = "shuffling"
CONDITIONS = ("without", "with")
SPLITS = ("train", "val", "test")


def class_contiguous(size: int, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every kept image at ``size`` px as the paper's Loader A read them: class folder by
    class folder, files in name order (``os.listdir`` on NTFS). Raw data is only read."""
    from bloodcells.preprocess import read_manifest

    manifest = read_manifest(manifest_path(root))
    manifest = manifest[manifest["split"].isin(SPLITS)].copy()
    manifest["row"] = manifest.groupby("split").cumcount()  # position in its split's array
    order = manifest.sort_values("path", key=lambda p: p.str.lower(), kind="stable")
    data = load_splits(size, root)
    x = np.empty((len(order), *data["train"][0].shape[1:]), dtype=data["train"][0].dtype)
    y = np.empty(len(order), dtype=np.int64)
    for split in SPLITS:
        at = (order["split"] == split).to_numpy()
        rows = order.loc[at, "row"].to_numpy()
        x[at] = np.asarray(data[split][0])[rows]
        y[at] = np.asarray(data[split][1])[rows]
    if not np.array_equal(y, order["label"].to_numpy()):
        raise ValueError(
            f"The cached arrays at {size} px do not match {manifest_path(root)}: rerun the "
            "'preprocess' stage (dvc repro preprocess)."
        )
    return x, y


def paper_split(
    y: np.ndarray,
    preshuffle: int | None,
    test_size: float = 0.3,
    random_state: int = 42,
    validation_split: float = 0.2,
) -> dict[str, np.ndarray]:
    """Row indices (into class-contiguous arrays) of the paper's fit, validation and test
    parts: an optional pre-shuffle (``sklearn.utils.shuffle`` with seed ``preshuffle``),
    then ``train_test_split(..., random_state=42, stratify=y)`` with its default shuffle,
    then Keras's ``validation_split``: the last ``validation_split`` of the training rows."""
    from sklearn.model_selection import train_test_split
    from sklearn.utils import shuffle

    idx = np.arange(len(y))
    if preshuffle is not None:
        idx = shuffle(idx, random_state=preshuffle)
    train, test = train_test_split(
        idx, test_size=test_size, random_state=random_state, stratify=y[idx]
    )
    cut = int(math.floor(len(train) * (1.0 - validation_split)))  # as Keras 3 cuts
    return {"fit": train[:cut], "val": train[cut:], "test": test}


def run_study(params: dict, root: Path | None = None) -> dict:
    """Train both conditions for every seed; the runs and their summary (:func:`summarise`)."""
    root = root or project_root()
    study = params[SECTION]
    seeds = [int(s) for s in study["seeds"]]
    configs = {seed: study_config(params, SECTION, seed=seed) for seed in seeds}
    size = configs[seeds[0]].image_size
    split_args = {k: study[k] for k in ("test_size", "random_state", "validation_split")}

    def compute() -> dict:
        x, y = class_contiguous(size, root)
        reference = paper_split(y, None, **split_args)["test"]
        runs = []
        for seed, cfg in configs.items():
            for condition in CONDITIONS:
                parts = paper_split(y, seed if condition == "with" else None, **split_args)
                fit, val, test = parts["fit"], parts["val"], parts["test"]
                result = train_arrays(
                    SECTION,
                    f"{condition}_s{seed}",
                    cfg,
                    (x[fit], y[fit]),
                    (x[val], y[val]),
                    root,
                    condition=condition,
                    **split_args,
                )
                probs, _ = predict_proba(result.model, x[test])
                runs.append(
                    {
                        "seed": seed,
                        "condition": condition,
                        "test_accuracy": float((probs.argmax(axis=1) == y[test]).mean()),
                        "test_images": len(test),
                        "test_shared_with_unshuffled": float(np.isin(test, reference).mean()),
                        "classes_in_fit": int(len(np.unique(y[fit]))),
                    }
                )
        return {"runs": runs}

    tkey = training_key(
        configs[seeds[0]],
        root,
        study=SECTION,
        seeds=seeds,
        code=source_hash(__file__),
        **split_args,
    )
    stored = keyed(resolve(Path("models") / SECTION / "shuffling.json", root), tkey, compute)
    cfg = configs[seeds[0]]
    return {
        **stored,
        **summarise(stored["runs"]),
        "family": study["family"],
        "image_size": size,
        "epochs": cfg.epochs,
        "conv_widths": cfg.conv_widths,
        **split_args,
    }


def _spread(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "n": len(a),
    }


def summarise(runs: list[dict]) -> dict:
    """Each condition's test accuracy (mean, sd, range) and the paired gap "with" minus
    "without" per seed: the split-to-split distribution, in accuracy (fractions)."""
    by = {(r["seed"], r["condition"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    gaps = [by[s, "with"]["test_accuracy"] - by[s, "without"]["test_accuracy"] for s in seeds]
    return {
        "conditions": {c: _spread([by[s, c]["test_accuracy"] for s in seeds]) for c in CONDITIONS},
        "gap": _spread(gaps),
        "test_shared": float(
            np.mean([by[s, "with"]["test_shared_with_unshuffled"] for s in seeds])
        ),
    }


def main(argv: list[str] | None = None) -> int:
    from bloodcells.timing import timed_stage

    result, _ = timed_stage(argv, __doc__, SECTION, run_study, metrics=True)
    g = result["gap"]
    print(
        f"shuffling: {len(result['runs'])} runs, gap (with - without) "
        f"{100 * g['mean']:+.2f} ± {100 * g['sd']:.2f} points"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
