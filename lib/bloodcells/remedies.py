"""Notebook 15's side of the training-side remedies (:mod:`bloodcells.robust` trains and
scores them): the table per remedy, the choice on validation, the conclusion, the metrics.
Report code only: editing it reruns the report, never the training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bloodcells.robust import SECTION_KEY


def remedy_table(
    scores: pd.DataFrame, records: list[dict], root: Path | None = None
) -> pd.DataFrame:
    """Per remedy (mean over seeds, and their spread): in-domain accuracy on the full
    validation and test splits (the runs' saved predictions), and mean accuracy under shift
    on the validation and test subsets."""
    shifted = scores[scores["shift"] != "none"]
    under = shifted.groupby(["remedy", "seed", "split"])["accuracy"].mean().unstack("split")
    from bloodcells.experiment import load_predictions

    rows = []
    for r in records:
        p = load_predictions(SECTION_KEY, r["variant"], root)
        rows.append(
            {
                "remedy": r["remedy"],
                "seed": r["seed"],
                "val accuracy": float((p["val_probs"].argmax(1) == p["val_y"]).mean()),
                "test accuracy": float((p["test_probs"].argmax(1) == p["test_y"]).mean()),
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


def conclusion(table: pd.DataFrame, chosen: str, test_ci: dict[str, tuple[float, float]]) -> str:
    """What the numbers say (markdown): each remedy's robustness beside its in-domain cost,
    the cost judged against the baseline's test-sampling 95% CI and, with two or more seeds,
    the seed spread; and the remedy chosen on validation."""
    base = table.loc["none"]
    lo, hi = test_ci["none"]
    half = (hi - lo) / 2
    seeds = int(table["seeds"].min())
    sd = table["sd over seeds (test accuracy)"].max() if seeds > 1 else None
    lines = [
        f"The baseline (the recipe as it is) scores {100 * base['test accuracy']:.2f}% on the "
        f"test split (95% CI {100 * lo:.2f}-{100 * hi:.2f}) and "
        f"{100 * base['test accuracy under shift']:.2f}% on average under the shifts."
    ]
    for remedy, row in table.drop(index="none").iterrows():
        gain = row["test accuracy under shift"] - base["test accuracy under shift"]
        change = row["test accuracy"] - base["test accuracy"]
        cost = -change
        bound = max(half, sd or 0.0)
        verdict = (
            f"costs {100 * cost:.2f} points in-domain, more than "
            + (f"the seed spread ({100 * sd:.2f}) and " if sd else "")
            + f"the test CI's half-width ({100 * half:.2f})"
            if cost > bound
            else f"changes in-domain accuracy by {100 * change:+.2f} points, within "
            + (f"the seed spread ({100 * sd:.2f}) or " if sd else "")
            + f"the test CI's half-width ({100 * half:.2f})"
        )
        lines.append(
            f"- **{remedy}**: {100 * row['test accuracy under shift']:.2f}% under shift "
            f"({100 * gain:+.2f} points against the baseline); it {verdict}."
        )
    if sd is None:
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


def metrics(table: pd.DataFrame, chosen: str, shifts: pd.DataFrame) -> dict:
    """``metrics/robust_training.json``: the table, the choice and the per-shift test
    accuracies, rounded (a stable file)."""
    return {
        "chosen_on_validation": chosen,
        "remedies": {
            remedy: {
                k: int(v) if k == "seeds" else round(float(v), 4)
                for k, v in row.items()
                if pd.notna(v)
            }
            for remedy, row in table.to_dict("index").items()
        },
        "test_accuracy_per_shift": {
            remedy: {k: round(float(v), 4) for k, v in row.items()}
            for remedy, row in shifts.to_dict("index").items()
        },
    }
