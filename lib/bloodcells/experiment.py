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
from bloodcells.families import check_widths
from bloodcells.inference import predict_proba
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
    "families.py",
    "hybrid.py",
    "inference.py",
    "inputs.py",
    "models.py",
    "preprocess.py",
    "supcon.py",
    "train.py",
)


def source_hash(*files: str | Path) -> str:
    """A hash of source files (a module's ``__file__``, or a name beside this module)."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in files:
        path = here / name
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def code_hash() -> str:
    """A hash of the training path's source (:data:`TRAINING_CODE`); a study adds its own
    module's (:func:`source_hash`) to its training key."""
    return source_hash(*TRAINING_CODE)


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
    from bloodcells.models import save_for_inference  # Keras: only where a run is saved

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


def held_out_scores(y: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy and macro-F1 (point estimates) of one study run's held-out part."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(axis=1)
    return {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=range(len(CLASSES)))),
    }


def train_arrays(
    key: str,
    name: str,
    cfg: TrainConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    root: Path,
    **extra_key,
) -> TrainResult:
    """Train on ``train``, select on ``val`` (a study's run ``models/<key>/<name>``'s
    working state, resumable, removed when done); time it in
    ``metrics/timings/train-<key>.json``."""
    dirs = run_dirs(key, name, training_key(cfg, root, study=name, **extra_key), root)
    result = train_model(cfg, *train, *val, dirs["work"], dirs["live"], verbose=0)
    record_run_timing(key, name, {"train_minutes": round(result.seconds / 60, 2)}, root)
    shutil.rmtree(dirs["work"], ignore_errors=True)
    return result


def study_config(params: dict, section: str, **overrides) -> TrainConfig:
    """The training config of a study (params section ``cross_validation`` or
    ``shuffling``): its ``family``'s recipe at the study's ``epochs``, ``image_size`` and,
    for the CNN, ``conv_widths`` (checked against the size, naming the study's key)."""
    study = params[section]
    widths = study.get("conv_widths")
    if widths is not None:
        check_widths(widths, study["image_size"], f"{section}.conv_widths")
        overrides = {"conv_widths": widths, **overrides}
    return family_config(
        params, study["family"], epochs=study["epochs"], image_size=study["image_size"], **overrides
    )


def best_epoch(history: pd.DataFrame) -> int | None:
    """The epoch (from 1) whose weights a run kept: the best validation accuracy."""
    return int(history["val_accuracy"].idxmax()) + 1 if "val_accuracy" in history else None


def train_stage(params: dict, key: str, root: Path | None = None, verbose: int = 2) -> list[str]:
    """Everything the ``train@<key>`` stage trains: each variant of ``models.<key>`` (the
    hybrid's and SupCon's own recipes for those keys). Returns what it made. The
    cross-validation and shuffling studies are stages of their own
    (:mod:`bloodcells.crossval`, :mod:`bloodcells.shuffling`)."""
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
    return made


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bloodcells.config import load_params

    parser = argparse.ArgumentParser(
        description="Train one family (the train@<key> stage): its models and predictions."
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
