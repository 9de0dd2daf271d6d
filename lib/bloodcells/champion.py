"""The study's champion: test-time augmentation and an ensemble of from-scratch models.

Everything is chosen on the validation split and scored once on the test split:

1. the ``candidates`` from-scratch models (weights ``none``) with the best validation
   accuracy are taken, those within ``max_gap`` of the best validation accuracy only (a
   model many points behind cannot lift an ensemble, and TTA over a slow network is the
   costliest step of the comparison on a CPU);
2. each predicts the validation and test images under the eight dihedral transforms
   (flips and 90-degree turns, the training augmentation) and the softmax outputs are
   averaged (test-time augmentation, TTA);
3. members are added greedily (Caruana et al. 2004, without replacement) while the
   validation log-loss of the averaged probabilities falls.
"""

from __future__ import annotations

import time

import numpy as np

from bloodcells.evaluate import evaluate
from bloodcells.paths import CLASSES


def dihedral(x: np.ndarray, view: int) -> np.ndarray:
    """View ``view`` (0-7) of a batch of NHWC images: 4 turns, each optionally mirrored."""
    out = np.rot90(x, k=view % 4, axes=(1, 2))
    return out[:, :, ::-1] if view >= 4 else out


def tta_proba(model, x: np.ndarray, views: int = 8) -> tuple[np.ndarray, float]:
    """Softmax averaged over the first ``views`` dihedral views; and images/s overall."""
    from bloodcells.inference import predict_proba

    x = np.asarray(x)
    t0 = time.perf_counter()
    probs = np.mean([predict_proba(model, dihedral(x, v))[0] for v in range(views)], axis=0)
    return probs, len(x) / (time.perf_counter() - t0)


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))


def greedy_ensemble(val_probs: dict[str, np.ndarray], y_val: np.ndarray) -> list[str]:
    """Members chosen by forward selection on validation log-loss (best single first)."""
    members: list[str] = []
    best = np.inf
    while True:
        scores = {
            name: log_loss(y_val, np.mean([val_probs[m] for m in [*members, name]], axis=0))
            for name in val_probs
            if name not in members
        }
        if not scores:
            return members
        name = min(scores, key=scores.get)
        if scores[name] >= best:
            return members
        members.append(name)
        best = scores[name]


def build_champion(
    runs: list[dict],
    x_by_size: dict[int, dict[str, np.ndarray]],
    load_model,
    candidates: int = 3,
    views: int = 8,
    n_bootstrap: int = 1000,
    max_gap: float = 1.0,
) -> dict:
    """Single best, single best with TTA, and the validation-chosen TTA ensemble, scored.

    ``x_by_size[size]`` holds the ``val`` and ``test`` images at each size a candidate
    needs; ``load_model(run)`` returns a run's Keras model. Labels come from the runs'
    saved predictions, which every run shares.
    """
    scratch = [r for r in runs if r["weights"] == "none"]
    if not scratch:
        raise ValueError("No model trained from scratch (weights: none) to build a champion from.")
    pool = sorted(scratch, key=lambda r: -r["val_accuracy"])[:candidates]
    pool = [r for r in pool if r["val_accuracy"] >= pool[0]["val_accuracy"] - max_gap]
    y_val = pool[0]["predictions"]["val_y"]
    y_test = pool[0]["predictions"]["test_y"]
    val, test, speed = {}, {}, {}
    for run in pool:
        model = load_model(run)
        xs = x_by_size[run["image_size"]]
        val[run["variant"]], _ = tta_proba(model, xs["val"], views)
        test[run["variant"]], speed[run["variant"]] = tta_proba(model, xs["test"], views)
    members = greedy_ensemble(val, y_val)
    single = pool[0]["variant"]

    def score(name: str, probs_val: np.ndarray, probs_test: np.ndarray, ips: float, **info):
        ev = evaluate(y_test, probs_test, CLASSES, n_bootstrap)
        return {
            "name": name,
            "val_accuracy": float(np.mean(probs_val.argmax(1) == y_val)),
            "test_accuracy": ev["accuracy"],
            "test_accuracy_ci95": ev["ci95"]["accuracy"],
            "macro_f1": ev["macro_f1"],
            "macro_f1_ci95": ev["ci95"]["macro_f1"],
            "balanced_accuracy": ev["balanced_accuracy"],
            "inference_images_per_second": round(ips, 1),
            "test_probs": probs_test,
            **info,
        }

    ens_ips = 1.0 / sum(1.0 / speed[m] for m in members)
    rows = [
        score(
            single,
            pool[0]["predictions"]["val_probs"],
            pool[0]["predictions"]["test_probs"],
            pool[0]["inference_images_per_second"],
            members=[single],
            views=1,
        ),
        score(
            f"{single} + TTA",
            val[single],
            test[single],
            speed[single],
            members=[single],
            views=views,
        ),
    ]
    if len(members) > 1:  # a one-member "ensemble" is the TTA row again
        rows.append(
            score(
                " + ".join(members) + " (ensemble + TTA)",
                np.mean([val[m] for m in members], axis=0),
                np.mean([test[m] for m in members], axis=0),
                ens_ips,
                members=members,
                views=views,
            )
        )
    chosen = max(rows, key=lambda r: r["val_accuracy"])
    return {"candidates": [r["variant"] for r in pool], "rows": rows, "chosen": chosen["name"]}


def champion_table(result: dict):
    """The champion's rows as a table (percentages), the validation-chosen one marked."""
    import pandas as pd

    from bloodcells.report import ci

    return pd.DataFrame(
        [
            {
                "configuration": r["name"],
                "chosen on validation": "yes" if r["name"] == result["chosen"] else "",
                "val acc. %": round(100 * r["val_accuracy"], 2),
                "test acc. %": round(100 * r["test_accuracy"], 2),
                "95% CI": ci(r["test_accuracy_ci95"]),
                "macro-F1 %": round(100 * r["macro_f1"], 2),
                "95% CI ": ci(r["macro_f1_ci95"]),
                "inference images/s": r["inference_images_per_second"],
            }
            for r in result["rows"]
        ]
    )


def champion_summary(result: dict) -> dict:
    """The chosen configuration's numbers, JSON-ready (for ``metrics/summary.json``)."""
    row = next(r for r in result["rows"] if r["name"] == result["chosen"])
    return {k: v for k, v in row.items() if k != "test_probs"} | {
        "candidates": result["candidates"]
    }
