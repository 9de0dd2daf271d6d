"""The training-side remedies' settings and report (:mod:`bloodcells.robust` trains and
scores them): the ``robust_training`` params check, and notebook 15's table per remedy,
choice on validation, conclusion and metrics. No training code: the runs' training key
covers :mod:`bloodcells.robust` and :mod:`bloodcells.stain`, so editing this retrains
nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bloodcells.config import ParamsError

SECTION = "robust_training"
#: the folder the runs live in: models/robust/
SECTION_KEY = "robust"
REMEDIES = ("none", "stain_augmentation", "groupnorm", "stain_normalisation")
SETTINGS = {
    "family": str,
    "image_size": int,
    "epochs": int,
    "conv_widths": list,
    "remedies": list,
    "seeds": list,
    "augmentation_strength": float,
    "groupnorm_groups": int,
    "groupnorm_learning_rate": float,
    "val_images": int,
    "test_images": int,
    "severities": list,
    "shift_seed": int,
    "choose_within": float,
}


def check_params(section: dict | None, families: dict) -> dict:
    """The ``robust_training`` section, checked; errors name the key and what to do."""
    if not isinstance(section, dict):
        raise ParamsError(f"Params key '{SECTION}' must be a mapping; got {section!r}.")
    for key in SETTINGS:
        if key not in section:
            raise ParamsError(f"Missing params key '{SECTION}.{key}' in params.yaml.")
    if section["family"] not in families:
        raise ParamsError(
            f"Params key '{SECTION}.family' is {section['family']!r}; it must name a 'models' "
            f"entry ({', '.join(families)})."
        )
    for key in ("image_size", "epochs", "groupnorm_groups"):
        v = section[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ParamsError(f"Params key '{SECTION}.{key}' must be an integer >= 1; got {v!r}.")
    for key in ("val_images", "test_images", "shift_seed"):
        v = section[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ParamsError(
                f"Params key '{SECTION}.{key}' must be 0 (all) or a number of images; got {v!r}."
            )
    remedies = section["remedies"]
    if (
        not isinstance(remedies, list)
        or "none" not in remedies
        or not set(remedies) <= set(REMEDIES)
        or len(set(remedies)) != len(remedies)
    ):
        raise ParamsError(
            f"Params key '{SECTION}.remedies' must list distinct names from {list(REMEDIES)}, "
            f"'none' (the baseline) among them; got {remedies!r}."
        )
    seeds = section["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ParamsError(
            f"Params key '{SECTION}.seeds' must be a list of distinct integers (every remedy "
            f"is trained once per seed); got {seeds!r}."
        )
    lr = section["groupnorm_learning_rate"]
    if not isinstance(lr, int | float) or isinstance(lr, bool) or lr <= 0:
        raise ParamsError(
            f"Params key '{SECTION}.groupnorm_learning_rate' must be > 0; got {lr!r}."
        )
    s = section["augmentation_strength"]
    if not isinstance(s, int | float) or isinstance(s, bool) or not 0 < s < 1:
        raise ParamsError(
            f"Params key '{SECTION}.augmentation_strength' must be in (0, 1); got {s!r}."
        )
    w = section["choose_within"]
    if not isinstance(w, int | float) or isinstance(w, bool) or not 0 <= w < 1:
        raise ParamsError(
            f"Params key '{SECTION}.choose_within' must be a fraction of validation accuracy "
            f"in [0, 1) (0.003 = 0.3 points); got {w!r}."
        )
    widths = section["conv_widths"]
    if (
        not isinstance(widths, list)
        or not widths
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in widths)
        or section["image_size"] < 2 ** len(widths)
    ):
        raise ParamsError(
            f"Params key '{SECTION}.conv_widths' must list positive filter counts, one block "
            f"each halving the image, at most log2(image_size) of them; got {widths!r} at "
            f"{section['image_size']} px."
        )
    from bloodcells.shift import SEVERITIES

    sev = section["severities"]
    if not isinstance(sev, list) or not sev or not all(v in SEVERITIES for v in sev):
        raise ParamsError(
            f"Params key '{SECTION}.severities' must list some of {list(SEVERITIES)}; got {sev!r}."
        )
    return section


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
