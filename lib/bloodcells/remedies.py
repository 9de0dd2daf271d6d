"""The training-side remedies' settings: the ``robust_training`` params section, its
names and its check. :mod:`bloodcells.robust` trains and scores the remedies;
:mod:`bloodcells.remedy_report` is notebook 15's report. The report lives apart so that
editing it reruns the report stage only: every file a stage imports is one of its DVC
dependencies, and DVC removes a stage's outputs before it reruns it, so a report function
kept here would retrain every remedy."""

from __future__ import annotations

from bloodcells.config import ParamsError

SECTION = "robust_training"
#: the folder the runs live in: models/robust/
SECTION_KEY = "robust"
REMEDIES = (
    "none",
    "stain_augmentation",
    "groupnorm",
    "stain_normalisation",
    "normalisation_augmentation",
)
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
