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
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bloodcells.evaluate import evaluate, provenance, write_metrics
from bloodcells.models import check_widths, save_for_inference
from bloodcells.paths import CLASSES, manifest_path, processed_dir, project_root, resolve
from bloodcells.preprocess import load_split, manifest_hash
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


def config_hash(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]


def run_dirs(key: str, variant: str, cfg: TrainConfig, root: Path) -> dict[str, Path]:
    return {
        "out": resolve(Path("models") / key / variant, root),
        "live": resolve(Path("dvclive") / key / variant, root),
        # Outside DVC's outputs so an interrupted run can resume; keyed by the config so a
        # changed config never resumes a stale run.
        "work": resolve(Path(".cache/runs") / key / f"{variant}-{config_hash(cfg)}", root),
    }


def run_variant(
    params: dict,
    key: str,
    variant: str | None = None,
    optimizer: str | None = None,
    root: Path | None = None,
    verbose: int = 2,
    **overrides,
) -> dict:
    """Train, select on validation, evaluate once on test; write and return the record."""
    root = root or project_root()
    cfg = family_config(params, key, optimizer, **overrides)
    variant = variant or key
    dirs = run_dirs(key, variant, cfg, root)
    data = load_splits(cfg.image_size, root)
    (x_tr, y_tr), (x_val, y_val) = data["train"], data["val"]
    result = train_model(cfg, x_tr, y_tr, x_val, y_val, dirs["work"], dirs["live"], verbose=verbose)
    return finish_run(params, key, variant, cfg, result, data, dirs, root)


def finish_run(
    params: dict,
    key: str,
    variant: str,
    cfg: TrainConfig,
    result: TrainResult,
    data: dict,
    dirs: dict[str, Path],
    root: Path,
    extra: dict | None = None,
) -> dict:
    """Score a selected model on the test split (once), save it, write its evaluation."""
    (x_val, y_val), (x_te, y_te) = data["val"], data["test"]
    val_probs, _ = predict_proba(result.model, x_val)
    test_probs, infer_ips = predict_proba(result.model, x_te)  # the one look at the test split
    ev_params = params["evaluate"]
    test = evaluate(y_te, test_probs, CLASSES, ev_params["n_bootstrap"], ev_params["ece_bins"])
    history = result.history
    record = {
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
        "best_epoch": int(history["val_accuracy"].idxmax()) + 1
        if "val_accuracy" in history
        else None,
        "train_accuracy_last": float(history["accuracy"].iloc[-1])
        if "accuracy" in history
        else None,
        "train_minutes": round(result.seconds / 60, 2),
        "train_images_per_second": round(result.images_per_second, 1),
        "inference_images_per_second": round(infer_ips, 1),
        "parameter_count": int(result.model.count_params()),
        "val_accuracy": float((val_probs.argmax(axis=1) == y_val).mean()),
        "test": test,
        **(extra or {}),
        "provenance": provenance(params, manifest_hash(manifest_path(root))),
    }
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
    write_metrics(out / "evaluation.json", record)
    shutil.rmtree(dirs["work"], ignore_errors=True)  # finished: nothing left to resume
    record["history"] = history
    return record


def read_record(key: str, variant: str | None = None, root: Path | None = None) -> dict:
    """The saved evaluation of an earlier run (``models/<key>/<variant>/evaluation.json``)."""
    path = resolve(Path("models") / key / (variant or key) / "evaluation.json", root)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the '{key}' training stage first.")
    return json.loads(path.read_text())


def headline(record: dict) -> dict:
    """The numbers of one run that `dvc metrics show` lists."""
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
        "train_minutes": record["train_minutes"],
        "inference_images_per_second": record["inference_images_per_second"],
        "parameter_count": record["parameter_count"],
    }


def write_family_metrics(
    key: str, records: list[dict], extra: dict | None = None, root: Path | None = None
) -> Path:
    """``metrics/<key>.json``: headline numbers per variant, extras, provenance."""
    root = root or project_root()
    body = {r["variant"]: headline(r) for r in records}
    if extra:
        body.update(extra)
    body["provenance"] = records[0]["provenance"] if records else {}
    return write_metrics(root / "metrics" / f"{key}.json", body)


def run_family(params: dict, key: str, root: Path | None = None, verbose: int = 2) -> list[dict]:
    """Train and evaluate every optimizer configured for ``models.<key>``.

    One optimizer: the variant is named ``<key>``; several: ``<key>_<optimizer>``.
    """
    optimizers = params["models"][key].get("optimizers") or ["adam"]
    records = []
    for opt in optimizers:
        variant = key if len(optimizers) == 1 else f"{key}_{opt}"
        records.append(run_variant(params, key, variant, opt, root=root, verbose=verbose))
    return records


def _train_eval_arrays(
    params: dict,
    key: str,
    name: str,
    cfg: TrainConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    root: Path,
) -> tuple[dict, object]:
    """Train on ``train``, select on ``val``; return (validation evaluation, model)."""
    dirs = run_dirs(key, name, cfg, root)
    result = train_model(cfg, *train, *val, dirs["work"], dirs["live"], verbose=0)
    probs, _ = predict_proba(result.model, val[0])
    ev = evaluate(
        val[1], probs, CLASSES, params["evaluate"]["n_bootstrap"], params["evaluate"]["ece_bins"]
    )
    shutil.rmtree(dirs["work"], ignore_errors=True)
    return ev, result


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


def cross_validate(params: dict, key: str, root: Path | None = None) -> dict:
    """Stratified k-fold CV over the training part (the paper's Table 1).

    Each fold trains on the other folds (oversampled with ``cv_balance`` — SMOTE in the
    paper — inside the training folds only) and is scored on its held-out fold.
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
    x, y, folds = training_part(cfg.image_size, root)
    n_folds = int(entry["cv_folds"])
    available = int(folds.max()) + 1
    if n_folds > available:
        raise ValueError(
            f"Params key 'models.{key}.cv_folds' is {n_folds}, but the manifest has "
            f"{available} folds ('preprocess.n_folds'); lower it or rerun preprocess."
        )
    rows = []
    for k in range(n_folds):
        held = folds == k
        ev, result = _train_eval_arrays(
            params, key, f"cv_fold{k}", cfg, (x[~held], y[~held]), (x[held], y[held]), root
        )
        rows.append(
            {
                "fold": k,
                "accuracy": ev["accuracy"],
                "macro_f1": ev["macro_f1"],
                "train_images": result.train_size,
                "train_minutes": round(result.seconds / 60, 2),
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
    }


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
    x, y, _ = training_part(size, root)
    x_te, y_te = load_splits(size, root)["test"]
    val_fraction = params["preprocess"]["val_size"]
    runs = []
    for seed in entry["shuffling_seeds"]:
        cfg = family_config(
            params,
            key,
            epochs=entry["shuffling_epochs"],
            seed=int(seed),
            image_size=size,
            **widths,
        )
        for order in ("class_sorted", "shuffled"):
            train, val = keras_validation_split(x, y, val_fraction, order, int(seed))
            _, result = _train_eval_arrays(
                params, key, f"shuffling_{order}_s{seed}", cfg, train, val, root
            )
            probs, _ = predict_proba(result.model, x_te)
            runs.append(
                {
                    "seed": int(seed),
                    "order": order,
                    "classes_in_training": int(len(np.unique(train[1]))),
                    "classes_in_validation": int(len(np.unique(val[1]))),
                    "test_accuracy": float((probs.argmax(axis=1) == y_te).mean()),
                }
            )
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
        "conv_widths": cfg.conv_widths,
    }
