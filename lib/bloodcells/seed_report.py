"""The seed spread's report (notebook 12): each seeded family's scores per seed, their mean
and sd, and which differences between models are real.

A difference is called **real** only when it exceeds both

* the test-sampling uncertainty: the paired bootstrap 95% CI of the accuracy difference
  (the test images resampled, each seed of A paired with the same seed of B) excludes 0, and
* the seed-to-seed spread: the mean difference over seeds is more than twice the sd of the
  per-seed differences (a new pair of seeds would most likely keep its sign).

A pair with a model that was not retrained under other seeds has no measured seed spread
and is never called real. The runs are the ones :mod:`bloodcells.seeds` planned
(``models/seed_spread/plan.json``): training lives there, so editing this file retrains
nothing.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bloodcells.experiment import held_out_scores, load_predictions, read_run
from bloodcells.paths import project_root, resolve
from bloodcells.statistics import paired_difference

#: the per-seed differences' sd a mean difference must exceed this many times
SEED_SD_FACTOR = 2.0
#: the stages that train a models entry by a recipe of its own (the rest: ``train@<key>``)
OWN_STAGES = {"hybrid": "train-hybrid", "supcon": "train-supcon"}


def own_stage(key: str) -> str:
    """The stage that trains ``models.<key>``'s own run."""
    return OWN_STAGES.get(key, f"train@{key}")


def read_plan(
    root: Path | None = None, study: str = "seed_spread", stage: str = "train-seeds"
) -> list[dict]:
    """The planned runs of a seeded study (``models/<study>/plan.json``: this one's, or the
    compute-matched comparison's), each with where it lives."""
    path = resolve(Path("models") / study / "plan.json", root or project_root())
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the study '{study}' has not been trained. Run `dvc repro {stage}`."
        )
    return json.loads(path.read_text())["runs"]


def seed_runs(
    root: Path | None = None, study: str = "seed_spread", stage: str = "train-seeds"
) -> pd.DataFrame:
    """One row per planned run of ``study``: family, seed, the stage that trained it (and
    whether that is the family's own run, the one the comparison scores), epochs, validation
    and test accuracy, test macro-F1; ``correct`` holds its per-image test correctness."""
    root = root or project_root()
    rows = []
    for run in read_plan(root, study, stage):
        record = read_run(run["key"], run["variant"], root)
        preds = load_predictions(run["key"], run["variant"], root)
        scores = held_out_scores(preds["test_y"], preds["test_probs"])
        rows.append(
            {
                "family": run["family"],
                "seed": run["seed"],
                "trained by": stage if run["key"] == study else own_stage(run["key"]),
                "own run": run["key"] != study,
                "epochs": record["epochs"],
                "val accuracy": record["val_accuracy"],
                "test accuracy": scores["accuracy"],
                "test macro-F1": scores["macro_f1"],
                "test_y": preds["test_y"],
                "correct": preds["test_probs"].argmax(axis=1) == preds["test_y"],
            }
        )
    return pd.DataFrame(rows)


def seed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per family: seeds, epochs, and mean ± sd (over seeds) of validation accuracy, test
    accuracy and test macro-F1, in percent; ordered by validation mean."""
    out = []
    for family, group in runs.groupby("family", sort=False):
        row = {
            "family": family,
            "seeds": [int(s) for s in group["seed"]],
            "epochs": ", ".join(sorted({str(e) for e in group["epochs"]})),
            # whether these runs are the compared run's config (its own run among them), or
            # a cheaper stand-in (``seed_spread.epochs`` set): the reports say which
            "the compared run's config": bool(group["own run"].any()),
        }
        for col in ("val accuracy", "test accuracy", "test macro-F1"):
            values = 100 * group[col].to_numpy()
            row[f"{col} mean"] = round(float(values.mean()), 2)
            sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")  # one seed
            row[f"{col} sd"] = round(sd, 2)
        row["test accuracy range"] = (
            f"{100 * group['test accuracy'].min():.2f}–{100 * group['test accuracy'].max():.2f}"
        )
        out.append(row)
    table = pd.DataFrame(out).set_index("family")
    return table.sort_values("val accuracy mean", ascending=False)


def pair_verdicts(runs: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every pair of seeded families (A the better on mean validation accuracy): the test
    accuracy difference A - B (mean over paired seeds), its paired bootstrap 95% CI, the sd
    of the per-seed differences, and whether the difference is real (module docstring)."""
    families = list(seed_table(runs).index)
    by_family = {f: runs[runs["family"] == f].sort_values("seed") for f in families}
    rows = []
    for a, b in itertools.combinations(families, 2):
        ga, gb = by_family[a], by_family[b]
        shared = sorted(set(ga["seed"]) & set(gb["seed"]))
        ga, gb = ga[ga["seed"].isin(shared)], gb[gb["seed"].isin(shared)]
        ya, yb = np.stack(ga["test_y"].to_list()), np.stack(gb["test_y"].to_list())
        if not np.array_equal(ya, yb):
            raise ValueError(f"{a} and {b} were scored on different test images.")
        ca, cb = np.stack(ga["correct"].to_list()), np.stack(gb["correct"].to_list())
        v = seeded_difference(ca, cb, n_bootstrap, seed)
        rows.append(
            {
                "model A": a,
                "model B": b,
                "seeds": len(shared),
                "A - B (points)": v["difference"],
                "95% CI": v["95% CI"],
                "sd over seeds (points)": v["sd over seeds"],
                "beyond the CI": v["beyond the CI"],
                "beyond the seed spread": v["beyond the seed spread"],
                "real": v["beyond the CI"] and v["beyond the seed spread"],
            }
        )
    return pd.DataFrame(rows)


def seeded_difference(
    correct_a: np.ndarray, correct_b: np.ndarray, n_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """A minus B on the same images, each ``(seeds, images)`` correctness with seeds paired:
    the mean accuracy difference and its paired bootstrap 95% CI, the sd of the per-seed
    differences (in points), and whether it lies beyond each (the module's rule)."""
    diff, lo, hi = paired_difference(correct_a, correct_b, n_bootstrap, seed)
    per_seed = correct_a.mean(axis=1) - correct_b.mean(axis=1)
    sd = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan")
    return {
        "difference": round(100 * diff, 2),
        "95% CI": f"{100 * lo:+.2f} to {100 * hi:+.2f}",
        "sd over seeds": round(100 * sd, 2),
        "beyond the CI": bool(lo > 0 or hi < 0),
        "beyond the seed spread": bool(abs(diff) > SEED_SD_FACTOR * sd) if sd == sd else False,
    }


def family_of(runs: list[dict], seeded: pd.DataFrame) -> dict[str, str]:
    """Each compared run's name in the seed study (``variant`` -> name): its own name when
    the study seeded it under that name (SupCon's control), else its ``models`` entry."""
    names = set(seeded["family"])
    return {r["variant"]: r["variant"] if r["variant"] in names else r["key"] for r in runs}


def mark_pairs(tests: pd.DataFrame, verdicts: pd.DataFrame, family_of: dict) -> pd.DataFrame:
    """The McNemar table of the comparison with its seed verdict: a significant pair is
    real only when both models were seeded and their difference exceeds the seed spread;
    ``family_of`` maps a variant to its family."""
    marked = tests.copy()
    if not len(marked):
        return marked.assign(**{"seed spread": [], "real": []})
    lookup = {}
    for _, v in verdicts.iterrows():
        lookup[(v["model A"], v["model B"])] = lookup[(v["model B"], v["model A"])] = v
    spread, real = [], []
    for _, t in marked.iterrows():
        v = lookup.get((family_of.get(t["model A"]), family_of.get(t["model B"])))
        if v is None:
            spread.append("not measured")
            real.append(False)
        else:
            spread.append("exceeded" if v["beyond the seed spread"] else "within")
            real.append(bool(t["significant"]) and bool(v["beyond the seed spread"]))
    return marked.assign(**{"seed spread": spread, "real": real})


def conclusion(table: pd.DataFrame, verdicts: pd.DataFrame, marked: pd.DataFrame) -> str:
    """What the seed spread says, in sentences computed from the tables."""
    parts = []
    for family, row in table.iterrows():
        stand_in = "" if row["the compared run's config"] else ", a stand-in for the run compared"
        parts.append(
            f"{family} {row['test accuracy mean']:.2f}% ± {row['test accuracy sd']:.2f} "
            f"({len(row['seeds'])} seeds at {row['epochs']} epoch(s){stand_in}, "
            f"range {row['test accuracy range']})"
        )
    text = "Test accuracy over seeds (mean ± sd): " + "; ".join(parts) + "."
    if len(verdicts):
        real = verdicts[verdicts["real"]]
        text += (
            f" Of {len(verdicts)} pair(s) of seeded families, {len(real)} differ beyond both "
            "the bootstrap CI and the seed spread"
            + (": " + ", ".join(f"{r['model A']} > {r['model B']}" for _, r in real.iterrows()))
            * bool(len(real))
            + "."
        )
    if len(marked):
        unmeasured = int((marked["seed spread"] == "not measured").sum())
        text += (
            f" Of the {len(marked)} McNemar pairs above, {int(marked['significant'].sum())} are "
            f"significant and {int(marked['real'].sum())} real; {unmeasured} involve a model "
            "not retrained under other seeds here, so none of those is called real."
        )
    return text


def summary_entry(table: pd.DataFrame, verdicts: pd.DataFrame, marked: pd.DataFrame) -> dict:
    """The seed spread's part of ``metrics/summary.json``: per family the test accuracy's
    mean and sd over seeds, and the pairs called real."""
    return {
        "families": {
            family: {
                "seeds": list(row["seeds"]),
                "test_accuracy_mean": row["test accuracy mean"],
                "test_accuracy_sd": row["test accuracy sd"],
                "epochs": row["epochs"],
                "compared_runs_config": row["the compared run's config"],
            }
            for family, row in table.iterrows()
        },
        "real_pairs": [
            [r["model A"], r["model B"]] for _, r in verdicts[verdicts["real"]].iterrows()
        ]
        if len(verdicts)
        else [],
        "real_leader_pairs": [
            [r["model A"], r["model B"]] for _, r in marked[marked["real"]].iterrows()
        ]
        if len(marked)
        else [],
    }
