"""Stage 12: every trained model side by side, with the statistics to tell them apart."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bloodcells.paper import PAPER_LABEL, paper_accuracy
from bloodcells.paths import CLASSES, project_root, resolve
from bloodcells.report import chosen_on_validation, ci
from bloodcells.statistics import holm, mcnemar

FAMILY_ORDER = (
    "cnn",
    "unet",
    "resnet50",
    "vgg16",
    "densenet201",
    "mobilenetv2",
    "inceptionv3",
    "xception",
    "hybrid",
    "supcon",
)


def read_records(root: Path | None = None) -> list[dict]:
    """The training record (``run.json``) of every finished run under ``models/``, in
    family order."""
    root = root or project_root()
    records = [
        json.loads(path.read_text())
        for key in FAMILY_ORDER
        for path in sorted(resolve(Path("models") / key, root).glob("*/run.json"))
    ]
    if not records:
        raise FileNotFoundError(
            f"No trained models under {resolve('models', root)}: run the training stages first."
        )
    return records


def load_runs(params: dict, root: Path | None = None) -> list[dict]:
    """Every finished run under ``models/``, scored on the test split
    (:func:`bloodcells.experiment.evaluate_run`), with its predictions."""
    from bloodcells.experiment import evaluate_run

    return [evaluate_run(params, record, root) for record in read_records(root)]


def comparison_table(runs: list[dict]) -> pd.DataFrame:
    """The paper's reported test accuracies beside this study's results and compute."""
    rows = []
    for r in runs:
        t = r["test"]
        paper = paper_accuracy(r["key"], r["variant"])
        rows.append(
            {
                "model": r["variant"],
                f"{PAPER_LABEL} test acc. unshuffled": paper.get("unshuffled", np.nan),
                f"{PAPER_LABEL} test acc. shuffled": paper.get("shuffled", np.nan),
                "train acc. (last epoch)": round(100 * (r.get("train_accuracy_last") or np.nan), 2),
                "test acc.": round(100 * t["accuracy"], 2),
                "95% CI": ci(t["ci95"]["accuracy"]),
                "macro-F1": round(100 * t["macro_f1"], 2),
                "macro-F1 95% CI": ci(t["ci95"]["macro_f1"]),
                "balanced acc.": round(100 * t["balanced_accuracy"], 2),
                "ECE": round(t["ece"], 4),
                "weights": r["weights"],
                "image size": r["image_size"],
                "epochs": r["epochs"],
                "train min": r["train_minutes"],
                "params": r["parameter_count"],
            }
        )
    return pd.DataFrame(rows).set_index("model").sort_values("test acc.", ascending=False)


def pairwise_mcnemar(runs: list[dict], top: int = 5, alpha: float = 0.05) -> pd.DataFrame:
    """McNemar tests between the ``top`` models by validation accuracy (chosen on validation,
    tested on the same test images), Holm-corrected."""
    leaders = sorted(runs, key=lambda r: -r["val_accuracy"])[:top]
    y = leaders[0]["predictions"]["test_y"]
    correct = {}
    for r in leaders:
        if not np.array_equal(r["predictions"]["test_y"], y):
            raise ValueError(f"{r['variant']} was scored on different test images.")
        correct[r["variant"]] = r["predictions"]["test_probs"].argmax(axis=1) == y
    rows = []
    for a, b in itertools.combinations(correct, 2):
        only_a, only_b, p = mcnemar(correct[a], correct[b])
        rows.append(
            {"model A": a, "model B": b, "only A right": only_a, "only B right": only_b, "p": p}
        )
    table = pd.DataFrame(rows)
    if len(table):
        table["p (Holm)"] = holm(table["p"].tolist())
        table["significant"] = table["p (Holm)"] < alpha
    return table


def recall_matrix(runs: list[dict]) -> pd.DataFrame:
    """Per-class recall (rows: models, columns: classes)."""
    return pd.DataFrame(
        {r["variant"]: {c: r["test"]["per_class"][c]["recall"] for c in CLASSES} for r in runs}
    ).T


def top_confusions(runs: list[dict], n: int = 8) -> pd.DataFrame:
    """The class pairs most often confused, summed over every model's test predictions."""
    total = sum(np.array(r["test"]["confusion_matrix"]) for r in runs)
    np.fill_diagonal(total, 0)
    pairs = [
        {"true": CLASSES[i], "predicted": CLASSES[j], "test images (all models)": int(total[i, j])}
        for i, j in zip(
            *np.unravel_index(np.argsort(total, axis=None)[::-1][:n], total.shape), strict=True
        )
    ]
    return pd.DataFrame(pairs)


def selected(runs: list[dict]) -> dict:
    """The model chosen on the validation split (best validation accuracy)."""
    return chosen_on_validation(runs)


def summary(runs: list[dict], tests: pd.DataFrame, champion: dict | None = None) -> dict:
    """The headline numbers the index page shows (written to ``metrics/summary.json``);
    no timings, so the file's hash is stable.

    The best model is the one chosen on validation, never on the test split.
    """
    ranked = sorted(runs, key=lambda r: -r["test"]["accuracy"])
    best = selected(runs)
    out = {
        "best_model": best["variant"],
        "best_chosen_by": "validation accuracy",
        "best_val_accuracy": best["val_accuracy"],
        "best_test_accuracy": best["test"]["accuracy"],
        "best_test_accuracy_ci95": best["test"]["ci95"]["accuracy"],
        "best_macro_f1": best["test"]["macro_f1"],
        "best_macro_f1_ci95": best["test"]["ci95"]["macro_f1"],
        "models": [
            {
                "model": r["variant"],
                "key": r["key"],
                "test_accuracy": r["test"]["accuracy"],
                "ci95": r["test"]["ci95"]["accuracy"],
                "macro_f1": r["test"]["macro_f1"],
                "macro_f1_ci95": r["test"]["ci95"]["macro_f1"],
                "val_accuracy": r["val_accuracy"],
                "image_size": r["image_size"],
                "epochs": r["epochs"],
                "weights": r["weights"],
            }
            for r in ranked
        ],
        "significant_pairs": tests[tests["significant"]][["model A", "model B"]].values.tolist()
        if len(tests)
        else [],
        "profile": best["provenance"]["profile"],
        "data_hash": best["provenance"]["data_hash"],
    }
    if champion is not None:  # its speed is a timing: metrics/timings/12_comparison.json
        out["champion"] = {k: v for k, v in champion.items() if k != "inference_images_per_second"}
    return out


def conclusion(runs: list[dict], tests: pd.DataFrame, champion: dict | None = None) -> str:
    """The comparison's conclusion, computed from the table and the tests."""
    best = selected(runs)
    others = sorted((r for r in runs if r is not best), key=lambda r: -r["val_accuracy"])
    second = others[0] if others else None
    t = best["test"]
    text = (
        f"The model chosen on validation under this profile is **{best['variant']}**: "
        f"{100 * t['accuracy']:.2f}% test accuracy (95% CI {100 * t['ci95']['accuracy'][0]:.2f}"
        f"–{100 * t['ci95']['accuracy'][1]:.2f}), macro-F1 {100 * t['macro_f1']:.2f}%, at "
        f"{best['image_size']} px with weights {best['weights']} after {best['epochs']} epoch(s) "
        f"({best['train_minutes']} min)."
    )
    if second is not None and len(tests):
        row = tests[
            ((tests["model A"] == best["variant"]) & (tests["model B"] == second["variant"]))
            | ((tests["model B"] == best["variant"]) & (tests["model A"] == second["variant"]))
        ]
        if len(row):
            p = float(row["p (Holm)"].iloc[0])
            text += (
                f" Against the runner-up, {second['variant']} "
                f"({100 * second['test']['accuracy']:.2f}%), McNemar's test gives a Holm-adjusted "
                f"p = {p:.3g}: the difference is "
                f"{'significant' if p < 0.05 else 'not significant'} at the 5% level."
            )
        n_sig = int(tests["significant"].sum())
        text += f" {n_sig} of {len(tests)} pairs among the leading models differ significantly."
    if champion is not None:
        lo, hi = champion["test_accuracy_ci95"]
        text += (
            f" The champion chosen on validation, **{champion['name']}**, scores "
            f"{100 * champion['test_accuracy']:.2f}% test accuracy (95% CI {100 * lo:.2f}–"
            f"{100 * hi:.2f}) and macro-F1 {100 * champion['macro_f1']:.2f}% at "
            f"{champion['inference_images_per_second']:,.0f} images/s."
        )
    return text


def load_model(run: dict, root: Path | None = None):
    """The saved Keras model of a run (:func:`bloodcells.models.load_saved`)."""
    from bloodcells.models import load_saved

    return load_saved(resolve(Path("models") / run["key"] / run["variant"] / "model.keras", root))
