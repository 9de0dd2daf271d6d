"""One trained-and-evaluated model, start to finish: what every family notebook calls.

:func:`run_variant` loads the cached arrays at the model's size, trains on the training
split (model selection on the validation split), then touches the test split exactly once
with the selected model, and writes the model, its predictions and its evaluation.
:func:`write_family_metrics` writes the family's DVC metrics file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from bloodcells.evaluate import evaluate, provenance
from bloodcells.models import check_widths, save_for_inference
from bloodcells.paths import (
    CLASSES,
    manifest_path,
    processed_dir,
    project_root,
    resolve,
    write_json,
)
from bloodcells.preprocess import load_split, manifest_hash
from bloodcells.timing import (
    describe_machine,
    read_timings,
    record_stage_time,
    record_timing,
    run_provenance,
)
from bloodcells.train import (
    TrainConfig,
    TrainResult,
    family_config,
    predict_proba,
    train_model,
)

HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "ece",
)


def load_splits(size: int, root: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The cached (images, labels) of every split at ``size`` px (images memory-mapped)."""
    folder = processed_dir(size, root)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No cached arrays at {size} px ({folder}). Add {size} to "
            "'preprocess.image_sizes' in params.yaml and rerun the 'preprocess' stage."
        )
    return {s: load_split(folder, s) for s in ("train", "val", "test")}


#: The modules whose code shapes a trained model (and the arrays it trains on).
TRAINING_CODE = (
    "experiment.py",
    "hybrid.py",
    "inputs.py",
    "models.py",
    "preprocess.py",
    "supcon.py",
    "train.py",
)


def code_hash() -> str:
    """A hash of the training path's source (:data:`TRAINING_CODE`)."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in TRAINING_CODE:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes())
    return digest.hexdigest()[:16]


def training_key(cfg: TrainConfig, root: Path, **extra) -> str:
    """What a trained model is a function of: its config, the data (the manifest's hash;
    the arrays follow from it, the image size and the code), the training code, and
    ``extra`` (a study's fold or order, a hybrid's branch models). Resuming and reusing a
    run both require the same key, so a changed split, dataset or code never resumes or
    reuses a run trained on something else."""
    blob = {
        "config": asdict(cfg),
        "data": manifest_hash(manifest_path(root)),
        "code": code_hash(),
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_dirs(key: str, variant: str, tkey: str, root: Path) -> dict[str, Path]:
    return {
        "out": resolve(Path("models") / key / variant, root),
        "live": resolve(Path("dvclive") / key / variant, root),
        # Outside DVC's outputs so an interrupted run can resume; keyed by everything that
        # shapes the run, so a changed config, split or code never resumes a stale one.
        "work": resolve(Path(".cache/runs") / key / f"{variant}-{tkey}", root),
    }


def record_run_timing(key: str, name: str, info: dict, root: Path) -> None:
    """One run's minutes and images/s, with the machine and code that ran it, in
    ``metrics/timings/train-<key>.json`` (apart from the run's stable outputs)."""
    prov = run_provenance()  # describes the hardware once, for both fields
    machine = {"machine": describe_machine(prov["hardware"]), "provenance": prov}
    record_timing(f"train-{key}", name, {**info, **machine}, root)


def keyed(path: Path, tkey: str, compute) -> dict:
    """The JSON result at ``path`` when it was made under training key ``tkey``; else
    ``compute()``, written there (with the key, last, atomically) and returned. One
    mechanism for every trained thing: a stage that reruns for a report-only reason, or a
    notebook opened in JupyterLab after ``dvc repro``, reuses what was trained."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("training_key") == tkey:
            return stored
    result = {**compute(), "training_key": tkey}
    write_json(path, result)
    return result


def ensure_run(
    key: str,
    variant: str,
    cfg: TrainConfig,
    train,
    root: Path,
    verbose: int = 2,
    **extra_key,
) -> dict:
    """The run ``models/<key>/<variant>/``, trained by ``train(dirs, data)`` unless it
    exists under the same training key (then no array is even opened). ``data`` is every
    split at ``cfg.image_size``; ``train`` returns (TrainResult, extra record fields)."""
    tkey = training_key(cfg, root, **extra_key)
    dirs = run_dirs(key, variant, tkey, root)

    def compute() -> dict:
        data = load_splits(cfg.image_size, root)
        result, extra = train(dirs, data)
        return save_run(key, variant, cfg, result, data, dirs, root, extra)

    return keyed(dirs["out"] / "run.json", tkey, compute)


def save_run(
    key: str,
    variant: str,
    cfg: TrainConfig,
    result: TrainResult,
    data: dict,
    dirs: dict[str, Path],
    root: Path,
    extra: dict | None = None,
) -> dict:
    """Predict the validation and test splits with the selected model and save the model,
    its predictions and its training record. The test predictions are saved, not looked
    at: scoring them is :func:`evaluate_run`'s, once, for the report."""
    (x_val, y_val), (x_te, y_te) = data["val"], data["test"]
    val_probs, _ = predict_proba(result.model, x_val)
    test_probs, infer_ips = predict_proba(result.model, x_te)
    history = result.history
    out = dirs["out"]
    out.mkdir(parents=True, exist_ok=True)
    save_for_inference(result.model, out / "model.keras")
    np.savez_compressed(
        out / "predictions.npz",
        val_probs=val_probs,
        val_y=y_val,
        test_probs=test_probs,
        test_y=y_te,
    )
    record_run_timing(
        key,
        variant,
        {
            "train_minutes": round(result.seconds / 60, 2),
            "train_images_per_second": round(result.images_per_second, 1),
            "inference_images_per_second": round(infer_ips, 1),
        },
        root,
    )
    shutil.rmtree(dirs["work"], ignore_errors=True)  # finished: nothing left to resume
    return {
        "family": cfg.family,
        "key": key,
        "variant": variant,
        "config": result.config,
        "image_size": cfg.image_size,
        "epochs": cfg.epochs,
        "optimizer": cfg.optimizer,
        "learning_rate": cfg.learning_rate,
        "weights": cfg.weights,
        "balance": cfg.balance,
        "seed": cfg.seed,
        "train_images": result.train_size,
        "best_epoch": best_epoch(history),
        "train_accuracy_last": float(history["accuracy"].iloc[-1])
        if "accuracy" in history
        else None,
        "parameter_count": int(result.model.count_params()),
        "val_accuracy": float((val_probs.argmax(axis=1) == y_val).mean()),
        "history": history.reset_index().to_dict("list"),
        **(extra or {}),
        "data_hash": manifest_hash(manifest_path(root)),
    }


def load_predictions(key: str, variant: str, root: Path | None = None) -> dict[str, np.ndarray]:
    preds = np.load(resolve(Path("models") / key / variant / "predictions.npz", root))
    return {k: preds[k] for k in preds.files}


def evaluate_run(params: dict, run: dict, root: Path | None = None) -> dict:
    """A saved run scored on the test split (bootstrap CIs, ECE), with its compute.

    The report side of a run: it reads what training saved and trains nothing."""
    root = root or project_root()
    preds = load_predictions(run["key"], run["variant"], root)
    ev = params["evaluate"]
    test = evaluate(
        preds["test_y"], preds["test_probs"], CLASSES, ev["n_bootstrap"], ev["ece_bins"]
    )
    timing = read_timings(f"train-{run['key']}", root).get(run["variant"], {})
    history = pd.DataFrame(run["history"]).set_index("step") if run.get("history") else None
    return {
        **run,
        "train_minutes": timing.get("train_minutes"),
        "train_images_per_second": timing.get("train_images_per_second"),
        "inference_images_per_second": timing.get("inference_images_per_second"),
        "test": test,
        "history": history,
        "predictions": preds,
        "provenance": {**provenance(params, run["data_hash"]), "machine": timing.get("machine")},
    }


def read_run(key: str, variant: str | None = None, root: Path | None = None) -> dict:
    """The training record of an earlier run (``models/<key>/<variant>/run.json``)."""
    path = resolve(Path("models") / key / (variant or key) / "run.json", root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the '{key}' training stage first.")
    return json.loads(path.read_text())


def headline(record: dict) -> dict:
    """The numbers of one run that `dvc metrics show` lists (no timings: those are in
    ``metrics/timings/``, so this file's hash is stable)."""
    test = record["test"]
    return {
        **{f"test_{k}": round(test[k], 4) for k in HEADLINE},
        "test_accuracy_ci95": [round(v, 4) for v in test["ci95"]["accuracy"]],
        "test_macro_f1_ci95": [round(v, 4) for v in test["ci95"]["macro_f1"]],
        "val_accuracy": round(record["val_accuracy"], 4),
        "image_size": record["image_size"],
        "epochs": record["epochs"],
        "optimizer": record["optimizer"],
        "weights": record["weights"],
        "parameter_count": record["parameter_count"],
    }


def write_family_metrics(
    key: str, records: list[dict], extra: dict | None = None, root: Path | None = None
) -> Path:
    """``metrics/<key>.json``: headline numbers per variant, extras, the data's hash."""
    root = root or project_root()
    body = {r["variant"]: headline(r) for r in records}
    if extra:
        body.update(extra)
    body["data_hash"] = records[0]["data_hash"] if records else None
    return write_json(root / "metrics" / f"{key}.json", body)


def train_variant(
    params: dict,
    key: str,
    variant: str | None = None,
    optimizer: str | None = None,
    root: Path | None = None,
    verbose: int = 2,
    **overrides,
) -> dict:
    """Train one variant (unless trained under the same key): select on validation, save
    the model and its validation and test predictions. Returns the training record."""
    root = root or project_root()
    cfg = family_config(params, key, optimizer, **overrides)
    variant = variant or key

    def train(dirs: dict, data: dict) -> tuple[TrainResult, dict]:
        (x_tr, y_tr), (x_val, y_val) = data["train"], data["val"]
        result = train_model(
            cfg, x_tr, y_tr, x_val, y_val, dirs["work"], dirs["live"], verbose=verbose
        )
        return result, {}

    return ensure_run(key, variant, cfg, train, root, verbose)


def run_variant(
    params: dict,
    key: str,
    variant: str | None = None,
    optimizer: str | None = None,
    root: Path | None = None,
    verbose: int = 2,
    **overrides,
) -> dict:
    """:func:`train_variant` (a no-op when trained), then :func:`evaluate_run`."""
    run = train_variant(params, key, variant, optimizer, root, verbose, **overrides)
    return evaluate_run(params, run, root)


def family_variants(params: dict, key: str) -> list[tuple[str, str]]:
    """(variant, optimizer) for each optimizer configured for ``models.<key>``.

    One optimizer: the variant is named ``<key>``; several: ``<key>_<optimizer>``."""
    optimizers = params["models"][key].get("optimizers") or ["adam"]
    return [(key if len(optimizers) == 1 else f"{key}_{opt}", opt) for opt in optimizers]


def run_family(params: dict, key: str, root: Path | None = None, verbose: int = 2) -> list[dict]:
    """Every configured variant of ``models.<key>``, trained if needed and evaluated."""
    return [
        run_variant(params, key, variant, opt, root=root, verbose=verbose)
        for variant, opt in family_variants(params, key)
    ]


def _scores(y: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy and macro-F1 (point estimates) of one study run's held-out part."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(axis=1)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=range(len(CLASSES)))),
    }


def _train_arrays(
    key: str,
    name: str,
    cfg: TrainConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    root: Path,
    **extra_key,
) -> TrainResult:
    """Train on ``train``, select on ``val``; time it in ``metrics/timings/<key>.json``."""
    dirs = run_dirs(key, name, training_key(cfg, root, study=name, **extra_key), root)
    result = train_model(cfg, *train, *val, dirs["work"], dirs["live"], verbose=0)
    record_run_timing(key, name, {"train_minutes": round(result.seconds / 60, 2)}, root)
    shutil.rmtree(dirs["work"], ignore_errors=True)
    return result


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


def best_epoch(history: pd.DataFrame) -> int | None:
    """The epoch (from 1) whose weights a run kept: the best validation accuracy."""
    return int(history["val_accuracy"].idxmax()) + 1 if "val_accuracy" in history else None


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


def cross_validate(params: dict, key: str, root: Path | None = None) -> dict:
    """Stratified k-fold CV over the training part (the paper's Table 1).

    Each fold trains on the other folds (oversampled with ``cv_balance`` — SMOTE in the
    paper — inside the training folds only), picks its epoch on an inner validation split of
    those training folds (``cv_inner_val``, stratified), and scores its held-out fold once:
    the held-out fold steers nothing.
    """
    root = root or project_root()
    entry = params["models"][key]
    cfg = family_config(
        params,
        key,
        epochs=entry["cv_epochs"],
        balance=entry["cv_balance"],
        image_size=entry["cv_image_size"],
        **_widths(entry, key, "cv_conv_widths", entry["cv_image_size"]),
    )
    n_folds = int(entry["cv_folds"])
    inner_val = float(entry.get("cv_inner_val", 0.1))

    def compute() -> dict:
        x, y, folds = training_part(cfg.image_size, root)
        available = int(folds.max()) + 1
        if n_folds > available:
            raise ValueError(
                f"Params key 'models.{key}.cv_folds' is {n_folds}, but the manifest has "
                f"{available} folds ('preprocess.n_folds'); lower it or rerun preprocess."
            )
        rows = []
        for k in range(n_folds):
            held = folds == k
            fit, inner = inner_split(y, ~held, inner_val, cfg.seed + k)
            result = _train_arrays(
                key, f"cv_fold{k}", cfg, (x[fit], y[fit]), (x[inner], y[inner]), root
            )
            probs, _ = predict_proba(result.model, x[held])
            rows.append(
                {
                    "fold": k,
                    **_scores(y[held], probs),
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
            "image_size": cfg.image_size,
            "epochs": cfg.epochs,
            "balance": cfg.balance,
            "conv_widths": cfg.conv_widths,
            "inner_val": inner_val,
        }

    tkey = training_key(cfg, root, study="cv", folds=n_folds, inner_val=inner_val)
    return keyed(resolve(Path("models") / key / "cv.json", root), tkey, compute)


def keras_validation_split(
    x: np.ndarray, y: np.ndarray, fraction: float, order: str, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """What ``model.fit(validation_split=fraction)`` does: validation = the LAST rows.

    ``order="class_sorted"``: rows as read from class folders, one class after another;
    ``order="shuffled"``: rows permuted with ``seed`` first (what shuffling the arrays does).
    """
    if order == "class_sorted":
        idx = np.argsort(y, kind="stable")
    elif order == "shuffled":
        idx = np.random.default_rng(seed).permutation(len(y))
    else:
        raise ValueError(f"Unknown order {order!r}: use 'class_sorted' or 'shuffled'.")
    cut = int(len(idx) * (1 - fraction))
    tr, va = idx[:cut], idx[cut:]
    return (x[tr], y[tr]), (x[va], y[va])


def _widths(entry: dict, key: str, name: str, image_size: int) -> dict:
    """``conv_widths`` for a reduced-size study when ``models.<key>.<name>`` sets it (else
    the family's own), checked against the study's image size."""
    if entry.get(name) is None:
        return {}
    check_widths(entry[name], image_size, f"models.{key}.{name}")
    return {"conv_widths": entry[name]}


def shuffling_study(params: dict, key: str, root: Path | None = None) -> dict:
    """The paper's "without/with shuffling", reproduced as Keras's validation_split does it.

    For each seed and both orders, train on the first 80% of the training part and select
    on the last 20%, then score the test split. Returns the per-run accuracies, each
    condition's mean and sd, the gap and whether it exceeds the seed-to-seed spread.
    """
    root = root or project_root()
    entry = params["models"][key]
    size = entry["shuffling_image_size"]
    widths = _widths(entry, key, "shuffling_conv_widths", size)  # fails before any work
    val_fraction = params["preprocess"]["val_size"]
    seeds = [int(seed) for seed in entry["shuffling_seeds"]]
    configs = {
        seed: family_config(
            params, key, epochs=entry["shuffling_epochs"], seed=seed, image_size=size, **widths
        )
        for seed in seeds
    }

    def compute() -> dict:
        x, y, _ = training_part(size, root)
        x_te, y_te = load_splits(size, root)["test"]
        runs = []
        for seed, cfg in configs.items():
            for order in ("class_sorted", "shuffled"):
                train, val = keras_validation_split(x, y, val_fraction, order, seed)
                name = f"shuffling_{order}_s{seed}"
                result = _train_arrays(key, name, cfg, train, val, root, order=order)
                probs, _ = predict_proba(result.model, x_te)
                runs.append(
                    {
                        "seed": seed,
                        "order": order,
                        "classes_in_training": int(len(np.unique(train[1]))),
                        "classes_in_validation": int(len(np.unique(val[1]))),
                        "test_accuracy": float((probs.argmax(axis=1) == y_te).mean()),
                    }
                )
        return {"runs": runs}

    tkey = training_key(
        configs[seeds[0]], root, study="shuffling", seeds=seeds, val_fraction=val_fraction
    )
    runs = keyed(resolve(Path("models") / key / "shuffling.json", root), tkey, compute)["runs"]
    summary = {}
    for order in ("class_sorted", "shuffled"):
        acc = np.array([r["test_accuracy"] for r in runs if r["order"] == order])
        summary[order] = {
            "mean": float(acc.mean()),
            "sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
        }
    gap = summary["shuffled"]["mean"] - summary["class_sorted"]["mean"]
    spread = max(summary["shuffled"]["sd"], summary["class_sorted"]["sd"])
    return {
        "runs": runs,
        "summary": summary,
        "gap": float(gap),
        "max_seed_sd": float(spread),
        "gap_exceeds_2sd": bool(abs(gap) > 2 * spread),
        "image_size": size,
        "epochs": entry["shuffling_epochs"],
        "conv_widths": configs[seeds[0]].conv_widths,
    }


def train_stage(params: dict, key: str, root: Path | None = None, verbose: int = 2) -> list[str]:
    """Everything the ``train@<key>`` stage trains: each variant of ``models.<key>``, and
    the family's cross-validation and shuffling studies where its params configure them
    (the hybrid's and SupCon's own recipes for those keys). Returns what it made."""
    root = root or project_root()
    if key == "hybrid":
        from bloodcells.hybrid import train_hybrid

        train_hybrid(params, root, verbose)
        return ["hybrid"]
    if key == "supcon":
        from bloodcells.supcon import train_supcon

        return train_supcon(params, root, verbose)
    made = []
    for variant, opt in family_variants(params, key):
        train_variant(params, key, variant, opt, root=root, verbose=verbose)
        made.append(variant)
    entry = params["models"][key]
    if entry.get("cv_folds"):
        cross_validate(params, key, root)
        made.append("cv")
    if entry.get("shuffling_seeds"):
        shuffling_study(params, key, root)
        made.append("shuffling")
    return made


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bloodcells.config import load_params

    parser = argparse.ArgumentParser(
        description="Train one family (the train@<key> stage): models, predictions, studies."
    )
    parser.add_argument("key", help="a models.<key> entry of params.yaml, e.g. cnn")
    args = parser.parse_args(argv)
    params = load_params()
    if args.key not in params["models"]:
        parser.error(f"unknown family {args.key!r}; params.yaml has {', '.join(params['models'])}")
    t0 = time.perf_counter()
    made = train_stage(params, args.key)
    record_stage_time(f"train-{args.key}", time.perf_counter() - t0)
    print(f"train@{args.key}: {', '.join(made)} in models/{args.key}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
