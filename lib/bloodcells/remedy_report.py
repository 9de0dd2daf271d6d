"""Notebook 15's report of the training-side remedies: the table per remedy, the choice on
validation, each remedy's in-domain difference from the baseline (paired, on the same test
images), the conclusion and ``metrics/robust_training.json``. Report code only: no training
stage imports it (decision 014)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bloodcells.remedies import SECTION_KEY


def load_predictions(records: list[dict], root: Path | None = None) -> dict[str, dict]:
    """Every run's saved validation and test predictions, by variant (read once)."""
    from bloodcells.experiment import load_predictions as load

    return {r["variant"]: dict(load(SECTION_KEY, r["variant"], root)) for r in records}


def _correct(preds: dict, split: str) -> np.ndarray:
    return preds[f"{split}_probs"].argmax(1) == preds[f"{split}_y"]


def remedy_table(scores: pd.DataFrame, records: list[dict], preds: dict[str, dict]) -> pd.DataFrame:
    """Per remedy (mean over seeds, and their spread): in-domain accuracy on the full
    validation and test splits (the runs' predictions, :func:`load_predictions`), and mean
    accuracy under shift on the validation and test subsets."""
    shifted = scores[scores["shift"] != "none"]
    under = shifted.groupby(["remedy", "seed", "split"])["accuracy"].mean().unstack("split")
    rows = []
    for r in records:
        p = preds[r["variant"]]
        rows.append(
            {
                "remedy": r["remedy"],
                "seed": r["seed"],
                "val accuracy": float(_correct(p, "val").mean()),
                "test accuracy": float(_correct(p, "test").mean()),
                "val accuracy under shift": float(under.loc[(r["remedy"], r["seed"]), "val"]),
                "test accuracy under shift": float(under.loc[(r["remedy"], r["seed"]), "test"]),
            }
        )
    per_run = pd.DataFrame(rows)
    table = per_run.groupby("remedy", sort=False).mean(numeric_only=True).drop(columns="seed")
    table["seeds"] = per_run.groupby("remedy", sort=False)["seed"].count()
    spread = per_run.groupby("remedy", sort=False)[["val accuracy", "test accuracy"]].std()
    table["sd over seeds (test accuracy)"] = spread["test accuracy"]
    return table


def in_domain_differences(
    records: list[dict], preds: dict[str, dict], n_bootstrap: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per remedy, its test accuracy minus the baseline's on the same test images, over the
    seeds both were trained with (each seed paired with the baseline's same seed): the mean
    difference, its paired bootstrap 95% CI (:func:`bloodcells.statistics.paired_difference`)
    and the sd over seeds of the per-seed differences (NaN with one seed)."""
    from bloodcells.statistics import paired_difference

    runs = {(r["remedy"], r["seed"]): preds[r["variant"]] for r in records}
    rows = {}
    for remedy in dict.fromkeys(r["remedy"] for r in records):
        if remedy == "none":
            continue
        seeds = [s for (m, s) in runs if m == remedy and ("none", s) in runs]
        if not seeds:
            raise ValueError(f"Remedy {remedy!r} shares no seed with the baseline ('none').")
        mine = np.stack([_correct(runs[(remedy, s)], "test") for s in seeds])
        base = np.stack([_correct(runs[("none", s)], "test") for s in seeds])
        diff, lo, hi = paired_difference(mine, base, n_bootstrap, seed)
        per_seed = mine.mean(axis=1) - base.mean(axis=1)
        rows[remedy] = {
            "difference": diff,
            "ci low": lo,
            "ci high": hi,
            "seeds": len(seeds),
            "sd over seeds": float(per_seed.std(ddof=1)) if len(seeds) > 1 else float("nan"),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def baseline_ci(
    records: list[dict], preds: dict[str, dict], n_bootstrap: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """The baseline's test-accuracy 95% CI (percentile bootstrap over the test images), at
    its first seed."""
    from bloodcells.evaluate import bootstrap_ci

    first = next(r for r in records if r["remedy"] == "none")
    p = preds[first["variant"]]
    ci = bootstrap_ci(p["test_y"], p["test_probs"].argmax(1), p["test_probs"].shape[1],
                      n_bootstrap, seed)  # fmt: skip
    return tuple(ci["accuracy"])


def choose(table: pd.DataFrame, within: float) -> str:
    """The remedy chosen on validation: of those whose validation accuracy is within
    ``within`` of the best, the most accurate on the validation images under shift."""
    keep = table[table["val accuracy"] >= table["val accuracy"].max() - within - 1e-12]
    return str(keep["val accuracy under shift"].idxmax())


def per_shift(scores: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Mean accuracy (over seeds and severities) per remedy (rows) and shift (columns),
    clean first, on ``split``'s subset."""
    part = scores[scores["split"] == split]
    grid = part.groupby(["remedy", "shift"], sort=False)["accuracy"].mean().unstack("shift")
    order = ["none", *[s for s in dict.fromkeys(part["shift"]) if s != "none"]]
    return grid[order].rename(columns={"none": "clean"})


def conclusion(
    table: pd.DataFrame,
    chosen: str,
    differences: pd.DataFrame,
    base_ci: tuple[float, float],
) -> str:
    """What the numbers say (markdown): each remedy's robustness beside its in-domain
    difference from the baseline (:func:`in_domain_differences`), called real only when its
    paired 95% CI excludes 0 and it exceeds the seed-to-seed spread (measured with two or
    more seeds); and the remedy chosen on validation."""
    base = table.loc["none"]
    lo, hi = base_ci
    lines = [
        f"The baseline (the recipe as it is) scores {100 * base['test accuracy']:.2f}% on the "
        f"test split (95% CI {100 * lo:.2f}-{100 * hi:.2f}) and "
        f"{100 * base['test accuracy under shift']:.2f}% on average under the shifts."
    ]
    one_seed = False
    for remedy, row in table.drop(index="none").iterrows():
        gain = row["test accuracy under shift"] - base["test accuracy under shift"]
        d = differences.loc[remedy]
        diff, sd = float(d["difference"]), float(d["sd over seeds"])
        ci_text = f"paired 95% CI {100 * d['ci low']:+.2f} to {100 * d['ci high']:+.2f}"
        outside_ci = d["ci high"] < 0 or d["ci low"] > 0
        seeded = int(d["seeds"]) > 1
        one_seed |= not seeded
        if not outside_ci:
            verdict = (
                f"changes in-domain accuracy by {100 * diff:+.2f} points, within test "
                f"sampling ({ci_text}, which includes 0)"
            )
        elif seeded and abs(diff) > sd:
            verdict = (
                f"{'costs' if diff < 0 else 'gains'} {100 * abs(diff):.2f} points in-domain, a "
                f"real difference: its {ci_text} excludes 0 and it exceeds the seed spread "
                f"(sd {100 * sd:.2f})"
            )
        elif seeded:
            verdict = (
                f"changes in-domain accuracy by {100 * diff:+.2f} points; its {ci_text} "
                f"excludes 0 but the change is within the seed spread (sd {100 * sd:.2f}), "
                "so it is not called real"
            )
        else:
            verdict = (
                f"{'costs' if diff < 0 else 'gains'} {100 * abs(diff):.2f} points in-domain; "
                f"its {ci_text} excludes 0, but with one seed the seed-to-seed spread is not "
                "measured, so it is not called real"
            )
        lines.append(
            f"- **{remedy}**: {100 * row['test accuracy under shift']:.2f}% under shift "
            f"({100 * gain:+.2f} points against the baseline); it {verdict}."
        )
    if one_seed:
        lines.append(
            "One seed per remedy in this profile: the seed-to-seed spread is not measured "
            "here, so no difference above is called real on it (the overnight profile trains "
            "three seeds)."
        )
    lines.append(
        f"Chosen on validation (within the section's `choose_within` of the best validation "
        f"accuracy, the most accurate under shift): **{chosen}**."
    )
    return "\n".join(lines)


def _rounded(frame: pd.DataFrame) -> dict:
    """``{row: {column: value}}``, values rounded to 4 places ("seeds" an int), NaN left out."""
    return {
        name: {
            k: int(v) if k == "seeds" else round(float(v), 4) for k, v in row.items() if pd.notna(v)
        }
        for name, row in frame.to_dict("index").items()
    }


def metrics(
    table: pd.DataFrame, chosen: str, shifts: pd.DataFrame, differences: pd.DataFrame
) -> dict:
    """``metrics/robust_training.json``: the table, the choice, the per-shift test
    accuracies and the paired in-domain differences from the baseline, rounded (a stable
    file)."""
    return {
        "chosen_on_validation": chosen,
        "test_accuracy_difference_from_baseline": _rounded(differences),
        "remedies": _rounded(table),
        "test_accuracy_per_shift": _rounded(shifts),
    }
