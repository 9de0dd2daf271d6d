"""The compute-matched comparison's report (notebook 12): the paper's families ranked under
one protocol (:mod:`bloodcells.matched`), their training minutes, their validation accuracy
against training minutes, and which differences survive the seed spread.

The ranking orders the families by mean validation accuracy over seeds (the test split
orders nothing); each family's test accuracy is scored once, to report, as mean ± sd over
seeds. A difference between two families is called real by the rule of
:mod:`bloodcells.seed_report`: beyond the paired bootstrap 95% CI *and* more than twice the sd
of the per-seed differences; with one seed there is no spread, and nothing is called real.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from bloodcells.experiment import read_run
from bloodcells.matched import SECTION, STAGE, TIMINGS
from bloodcells.paths import project_root
from bloodcells.seed_report import SEED_SD_FACTOR, seed_runs, seed_table
from bloodcells.timing import read_timings


def is_run(params: dict) -> bool:
    """Whether the active profile runs the study (``compute_matched.families`` not empty)."""
    return bool(params[SECTION]["families"])


def protocol(section: dict) -> str:
    """The protocol in one sentence, from the params section."""
    r = section["recipe"]
    return (
        f"{section['image_size']} px, {section['epochs']} epoch(s), "
        f"{r['optimizer']} at {r['learning_rate']:g}, batch {r['batch_size']}, "
        f"head Dense {r['dense_units']} + dropout {r['dropout']:g}, label smoothing "
        f"{r['label_smoothing']:g}, balance {r['balance']}, "
        f"{'flips and 90-degree turns' if r['augment'] else 'no augmentation'}; "
        "from scratch, nothing frozen"
    )


def not_run_note(params: dict) -> str:
    """What a profile without the study says instead of a ranking: nothing measured here,
    and which profile measures it."""
    return (
        f"Not run under profile `{params['profile']}`: `{SECTION}.families` is empty, so "
        "this report ranks no family on a matched protocol and claims nothing about one; "
        "the ranking above is each family's own recipe at its own share of the CPU. The "
        "`overnight` profile runs the comparison (its families and seeds: "
        "`profiles.overnight.compute_matched` in `params.yaml`); run it with "
        "`dvc exp run -S profile=overnight`. The protocol it would use here: "
        f"{protocol(params[SECTION])}."
    )


def matched_runs(root: Path | None = None) -> pd.DataFrame:
    """One row per planned run (:func:`bloodcells.seed_report.seed_runs` of this study),
    with its parameter count, its training minutes on the machine that trained it (NaN
    when that machine's timing is gone) and its per-epoch validation accuracy."""
    root = root or project_root()
    runs = seed_runs(root, SECTION, STAGE)
    timings = read_timings(TIMINGS, root)
    minutes, params, curves = [], [], []
    for _, row in runs.iterrows():
        variant = f"{row['family']}_s{row['seed']}"
        record = read_run(SECTION, variant, root)
        minutes.append(float(timings.get(variant, {}).get("train_minutes", np.nan)))
        params.append(int(record["parameter_count"]))
        curves.append([float(v) for v in record["history"].get("val_accuracy", [])])
    return runs.assign(**{"train minutes": minutes, "parameters": params, "val curve": curves})


def ranking(runs: pd.DataFrame) -> pd.DataFrame:
    """Per family, ranked by mean validation accuracy over seeds: the seed table's mean ±
    sd of validation and test accuracy and macro-F1 (percent), the parameters (millions)
    and the mean training minutes."""
    table = seed_table(runs).drop(columns=["the compared run's config"])
    extra = runs.groupby("family").agg(
        params=("parameters", "first"), minutes=("train minutes", "mean")
    )
    table.insert(0, "rank", range(1, len(table) + 1))
    table["parameters (M)"] = (extra.loc[table.index, "params"] / 1e6).round(2)
    table["train minutes (mean)"] = extra.loc[table.index, "minutes"].round(2)
    return table


def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy after each epoch against training minutes, per run: the
    minutes at epoch k are k x the run's minutes / its epochs (its mean pace; the per-epoch
    curve itself is the dvclive log the run's record holds)."""
    rows = []
    for _, run in runs.iterrows():
        n = len(run["val curve"])
        for k, acc in enumerate(run["val curve"], start=1):
            rows.append(
                {
                    "family": run["family"],
                    "seed": run["seed"],
                    "epoch": k,
                    "train minutes": run["train minutes"] * k / n if n else np.nan,
                    "val accuracy": 100 * acc,
                }
            )
    return pd.DataFrame(rows)


def accuracy_vs_minutes(curves: pd.DataFrame, title: str = "") -> plt.Figure:
    """Validation accuracy after each epoch against training minutes (:func:`curves`), one
    line per run (colour: family; one line per seed). Here, not in :mod:`bloodcells.plots`,
    which every report stage depends on."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    families = list(dict.fromkeys(curves["family"]))
    palette = dict(zip(families, sns.color_palette("tab10", len(families)), strict=True))
    for (family, seed), run in curves.groupby(["family", "seed"], sort=False):
        first = seed == curves.loc[curves["family"] == family, "seed"].iloc[0]
        ax.plot(
            run["train minutes"],
            run["val accuracy"],
            marker="o",
            color=palette[family],
            label=family if first else None,
        )
    ax.set_xlabel("training minutes (this machine)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "Validation accuracy against training minutes")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def conclusion(table: pd.DataFrame, pairs: pd.DataFrame, section: dict) -> str:
    """What the comparison says, in sentences computed from the tables."""
    n_seeds = len(section["seeds"])
    order = "; ".join(
        f"{row['rank']}. {family} {row['test accuracy mean']:.2f}%"
        + (f" ± {row['test accuracy sd']:.2f}" if n_seeds > 1 else "")
        + f" ({row['train minutes (mean)']:.1f} min)"
        for family, row in table.iterrows()
    )
    text = (
        f"Under one protocol ({protocol(section)}), ranked by validation accuracy, test "
        f"accuracy{' (mean ± sd over ' + str(n_seeds) + ' seeds)' if n_seeds > 1 else ''} "
        f"and training minutes here: {order}."
    )
    if n_seeds < 2:
        return text + (
            " One seed: no seed spread is measured, so no difference is called real; the "
            "ranking is a single draw."
        )
    real = pairs[pairs["real"]]
    adjacent = [
        (a, b)
        for a, b in zip(table.index[:-1], table.index[1:], strict=True)
        if not pairs[(pairs["model A"] == a) & (pairs["model B"] == b)]["real"].any()
    ]
    text += (
        f" Of {len(pairs)} pairs, {len(real)} differ beyond both the bootstrap CI and "
        f"{SEED_SD_FACTOR:g} sd of the per-seed differences"
        + (": " + ", ".join(f"{r['model A']} > {r['model B']}" for _, r in real.iterrows()))
        * bool(len(real))
        + "."
    )
    if adjacent:
        text += " Not separated from the next in rank: " + ", ".join(
            f"{a} and {b}" for a, b in adjacent
        )
        text += "."
    return text


def summary(params: dict, table: pd.DataFrame | None, pairs: pd.DataFrame | None) -> dict:
    """``metrics/compute_matched.json``: the protocol and, when run, each family's rank,
    test accuracy mean and sd, training minutes, and the pairs called real."""
    section = params[SECTION]
    body: dict = {"profile": params["profile"], "run": is_run(params), "protocol": section}
    if table is None:
        return body
    body["families"] = {
        family: {
            "rank": int(row["rank"]),
            "val_accuracy_mean": row["val accuracy mean"],
            "test_accuracy_mean": row["test accuracy mean"],
            "test_accuracy_sd": None
            if np.isnan(row["test accuracy sd"])
            else row["test accuracy sd"],
            "test_macro_f1_mean": row["test macro-F1 mean"],
        }
        for family, row in table.iterrows()
    }
    body["real_pairs"] = [[r["model A"], r["model B"]] for _, r in pairs[pairs["real"]].iterrows()]
    return body
