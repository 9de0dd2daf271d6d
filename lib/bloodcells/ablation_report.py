"""The recipe ablation's report (notebook 12): per change, validation accuracy over seeds,
its difference from the base, and whether it is kept.

A change is **kept** only when it helps on validation beyond both

* the validation-sampling uncertainty: the paired bootstrap 95% CI of the accuracy
  difference (validation images resampled, each seed paired with the base's same seed)
  lies above 0, and
* the seed-to-seed spread: the mean difference is more than
  :data:`bloodcells.seed_report.SEED_SD_FACTOR` times the sd of the per-seed differences.

It reads the validation predictions the runs saved (``models/ablation/``); the test split
is not read here. Training lives in :mod:`bloodcells.ablation`, so editing this file
retrains nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bloodcells.ablation import BASE, SECTION, STAGE, TIMINGS, selected
from bloodcells.experiment import load_predictions, read_run
from bloodcells.paths import project_root
from bloodcells.seed_report import read_plan, seeded_difference
from bloodcells.timing import read_timings


def is_run(params: dict) -> bool:
    """Whether the study trains here (``ablation.run`` selects a change)."""
    return bool(selected(params[SECTION]))


def not_run_note(params: dict) -> str:
    """What a run without the study says instead of a table: nothing measured here, and
    how to measure it."""
    section = params[SECTION]
    why = (
        "`ablation.run` selects no change" if section["changes"] else "`ablation.changes` is empty"
    )
    changes = ", ".join(f"`{name}`" for name in section["changes"]) or "none listed"
    epochs = f"{section['epochs']} epochs" if section["epochs"] else "the base's epochs"
    return (
        f"Not run under profile `{params['profile']}`: {why}, so this report keeps or drops "
        "no change of the recipe and claims nothing about one. The ablation runs on demand: "
        f"every recipe under {len(section['seeds'])} seeds at {epochs}, more than a CPU "
        "profile's budget leaves (`make estimate` with `ablation.run: all` says how long "
        "here). After `make repro`, `dvc exp run -S ablation.run=all` trains it and "
        f"nothing else; its changes (`ablation.changes` in `params.yaml`): {changes}."
    )


def ablation_runs(root=None) -> pd.DataFrame:
    """One row per planned run: change, its settings, seed, epochs, validation accuracy,
    training minutes; ``val_y`` and ``correct`` hold its per-image validation results."""
    root = root or project_root()
    timings = read_timings(TIMINGS, root)
    rows = []
    for run in read_plan(root, SECTION, STAGE):
        record = read_run(run["key"], run["variant"], root)
        preds = load_predictions(run["key"], run["variant"], root)
        rows.append(
            {
                "change": run["change"],
                "settings": ", ".join(f"{k} {v}" for k, v in run["settings"].items()) or "-",
                "seed": run["seed"],
                "epochs": record["epochs"],
                "image size": record["image_size"],
                "val accuracy": record["val_accuracy"],
                "train minutes": timings.get(run["variant"], {}).get("train_minutes"),
                "val_y": preds["val_y"],
                "correct": preds["val_probs"].argmax(axis=1) == preds["val_y"],
            }
        )
    return pd.DataFrame(rows)


def ablation_table(runs: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per change (the base first): validation accuracy mean ± sd over seeds, the mean
    difference from the base with its paired bootstrap CI and the sd of the per-seed
    differences, training minutes, and the verdict (module docstring), in percent."""
    base = runs[runs["change"] == BASE].sort_values("seed")
    if base.empty:
        raise ValueError(f"The ablation has no '{BASE}' runs to compare with.")
    rows = []
    for change, group in runs.groupby("change", sort=False):
        group = group.sort_values("seed")
        values = 100 * group["val accuracy"].to_numpy()
        row = {
            "change": change,
            "settings": group["settings"].iloc[0],
            "seeds": len(group),
            "epochs": ", ".join(sorted({str(e) for e in group["epochs"]})),
            "val accuracy mean": round(float(values.mean()), 2),
            "val accuracy sd": round(float(values.std(ddof=1)), 2) if len(values) > 1 else None,
            "train minutes": _mean(group["train minutes"]),
        }
        if change != BASE:
            row.update(_against_base(group, base, change, n_bootstrap, seed))
        rows.append(row)
    return pd.DataFrame(rows).set_index("change")


def _mean(values: pd.Series) -> float | None:
    known = [v for v in values if v is not None and v == v]
    return round(float(np.mean(known)), 2) if known else None


def _against_base(group, base, change: str, n_bootstrap: int, seed: int) -> dict:
    shared = sorted(set(group["seed"]) & set(base["seed"]))
    if not shared:
        raise ValueError(f"Change '{change}' shares no seed with the base.")
    a, b = group[group["seed"].isin(shared)], base[base["seed"].isin(shared)]
    ya, yb = np.stack(a["val_y"].to_list()), np.stack(b["val_y"].to_list())
    if not np.array_equal(ya, yb):
        raise ValueError(
            f"Change '{change}' and the base were validated on different images (a change "
            "of image size keeps the split: rerun `dvc repro preprocess` if this appears)."
        )
    ca, cb = np.stack(a["correct"].to_list()), np.stack(b["correct"].to_list())
    v = seeded_difference(ca, cb, n_bootstrap, seed)
    if v["beyond the CI"] and v["beyond the seed spread"]:
        verdict = "kept: helps" if v["difference"] > 0 else "dropped: hurts"
    else:
        verdict = "dropped: within the noise"
    return {
        "vs base (points)": v["difference"],
        "95% CI": v["95% CI"],
        "sd over seeds (points)": v["sd over seeds"],
        "beyond the CI": v["beyond the CI"],
        "beyond the seed spread": v["beyond the seed spread"],
        "verdict": verdict,
    }


def kept(table: pd.DataFrame) -> list[str]:
    """The changes that help beyond both the CI and the seed spread."""
    if "verdict" not in table:
        return []
    return [c for c, v in table["verdict"].items() if isinstance(v, str) and v.startswith("kept")]


def conclusion(table: pd.DataFrame) -> str:
    """What the ablation says, in sentences computed from the table."""
    base = table.loc[BASE]
    lines = [
        f"The base recipe reaches {base['val accuracy mean']:.2f}% validation accuracy "
        f"(sd {base['val accuracy sd']:.2f} over {base['seeds']} seeds, {base['epochs']} "
        "epochs)."
    ]
    tried = [c for c in table.index if c != BASE]
    helped = kept(table)
    for change in tried:
        row = table.loc[change]
        lines.append(
            f"{change} ({row['settings']}): {row['vs base (points)']:+.2f} points "
            f"(95% CI {row['95% CI']}, sd over seeds {row['sd over seeds (points)']:.2f}): "
            f"{row['verdict']}."
        )
    if tried:
        lines.append(
            "Kept: " + (", ".join(helped) if helped else "none: no change helps beyond both "
                        "the validation CI and the seed spread") + "."
        )  # fmt: skip
    return " ".join(lines)


#: wall-clock columns: shown in the report, kept out of ``metrics/`` (whose files
#: reproduce bit for bit; timings live in ``metrics/timings/``)
WALL_CLOCK = ("train minutes",)


def summary(params: dict, table: pd.DataFrame | None) -> dict:
    """``metrics/ablation.json``: the section and, when run, per change its validation
    mean and sd, difference from the base, CI, seed sd and verdict (no wall-clock
    figure: the minutes are in ``metrics/timings/train-ablation.json``)."""
    body: dict = {"profile": params["profile"], "run": is_run(params), SECTION: params[SECTION]}
    if table is None:
        return body
    body["changes"] = {
        change: {
            k.replace(" ", "_").replace("(", "").replace(")", "").replace("%", "pct"): (
                None if isinstance(v, float) and v != v else v
            )
            for k, v in row.items()
            if k not in WALL_CLOCK
        }
        for change, row in table.to_dict("index").items()
    }
    body["kept"] = kept(table)
    return body
