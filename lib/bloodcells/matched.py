"""The compute-matched comparison (stage ``train-matched``; issue 16, part 4): every paper
family trained under one protocol, so that their ranking answers "which architecture" and
not "which family got more CPU".

Each family's own run (``train@<family>``) has a size, an epoch count and a recipe tuned to
its share of the CPU budget. Here every family in ``compute_matched.families`` trains at one
``image_size``, for the same ``epochs``, with one ``recipe`` (optimizer, learning rate, batch
size, head, dropout, label smoothing, class balance, augmentation), from scratch, nothing
frozen, under each of ``seeds``. Only the architecture differs (the CNN keeps its own
``conv_widths``, which *are* its architecture). The budget is **equal epochs**: every family
sees the same images the same number of times, so the result is the same on any machine and
an interrupted run resumes to it; each run's training minutes on this machine are reported
beside its accuracy (notebook 12), and its validation curve is drawn against them.

Runs live in ``models/compute_matched/<family>_s<seed>/`` (model, validation and test
predictions, record), trained once per training key and resumable, beside
``models/compute_matched/plan.json``; the output persists (``dvc.yaml``), so a changed seed
or family list trains only what is new and :func:`bloodcells.seeds.prune_runs` removes the
runs no longer planned. The report side is :mod:`bloodcells.matched_report`.
"""

from __future__ import annotations

from pathlib import Path

from bloodcells.config import BALANCE, OPTIMIZERS, ParamsError
from bloodcells.paths import project_root

SECTION = "compute_matched"
#: the training stage; its runs' and its own timings: ``metrics/timings/train-compute_matched.json``
STAGE = "train-matched"
TIMINGS = f"train-{SECTION}"
#: the paper's eight families (the hybrid and SupCon are built from them, not compared here)
PAPER_FAMILIES = (
    "cnn",
    "unet",
    "resnet50",
    "vgg16",
    "densenet201",
    "mobilenetv2",
    "inceptionv3",
    "xception",
)
#: what ``recipe`` must set, and the TrainConfig field each one is
RECIPE_KEYS = (
    "optimizer",
    "learning_rate",
    "batch_size",
    "dense_units",
    "dropout",
    "label_smoothing",
    "balance",
    "augment",
)
#: a family's keys this study sets itself (editing them in ``models`` leaves it alone)
OVERRIDDEN = (
    *RECIPE_KEYS,
    "optimizers",
    "image_size",
    "epochs",
    "seed",
    "weights",
    "frozen_fraction",
)


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_params(section: dict | None, models: dict, sizes: list[int]) -> dict:
    """The ``compute_matched`` section, checked against the ``models`` entries and the
    cached ``sizes``; every error names the key and what to do."""
    from bloodcells.families import ModelConfigError, check_size, get_family

    if not isinstance(section, dict):
        raise ParamsError(f"Params key '{SECTION}' must be a mapping; got {section!r}.")
    for key in ("families", "image_size", "epochs", "seeds", "recipe"):
        if key not in section:
            raise ParamsError(f"Missing params key '{SECTION}.{key}' in params.yaml.")
    families = section["families"]
    if not isinstance(families, list) or len(set(families)) != len(families):
        raise ParamsError(
            f"Params key '{SECTION}.families' must be a list of distinct families "
            f"(empty: the study is not run under this profile); got {families!r}."
        )
    for name in families:
        if name not in PAPER_FAMILIES or name not in models:
            raise ParamsError(
                f"Params key '{SECTION}.families' has {name!r}; it must name one of the "
                f"paper's families with a 'models' entry ({', '.join(PAPER_FAMILIES)})."
            )
    size = section["image_size"]
    if size not in sizes:
        raise ParamsError(
            f"Params key '{SECTION}.image_size' is {size!r}, which is not among the cached "
            f"sizes 'preprocess.image_sizes' {sizes}; add it there."
        )
    try:
        for name in families:
            check_size(get_family(name, f"{SECTION}.families"), size, f"{SECTION}.image_size")
    except ModelConfigError as err:
        raise ParamsError(str(err)) from None
    if not _is_int(section["epochs"], 1):
        raise ParamsError(
            f"Params key '{SECTION}.epochs' must be an integer >= 1; got {section['epochs']!r}."
        )
    seeds = section["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(_is_int(s, 0) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ParamsError(
            f"Params key '{SECTION}.seeds' must list one or more distinct integers >= 0 "
            f"(three or more to call a difference real); got {seeds!r}."
        )
    recipe = section["recipe"]
    if not isinstance(recipe, dict) or set(recipe) != set(RECIPE_KEYS):
        given = sorted(recipe) if isinstance(recipe, dict) else recipe
        raise ParamsError(
            f"Params key '{SECTION}.recipe' must set exactly {', '.join(RECIPE_KEYS)}; "
            f"got {given!r}."
        )
    if recipe["optimizer"] not in OPTIMIZERS:
        raise ParamsError(
            f"Params key '{SECTION}.recipe.optimizer' is {recipe['optimizer']!r}; "
            f"allowed: {', '.join(OPTIMIZERS)}."
        )
    if recipe["balance"] not in BALANCE:
        raise ParamsError(
            f"Params key '{SECTION}.recipe.balance' is {recipe['balance']!r}; "
            f"allowed: {', '.join(BALANCE)}."
        )
    for key in families:  # every recipe value in range, named by this section's key
        try:
            config(section, models, key, seeds[0])
        except ModelConfigError as err:
            raise ParamsError(f"{err} (from '{SECTION}.recipe')") from None
    return section


def run_name(family: str, seed: int) -> str:
    return f"{family}_s{seed}"


def family_entry(models: dict, family: str) -> dict:
    """What this study reads of ``models.<family>``: the architecture's own keys (the CNN's
    ``conv_widths``), never its recipe."""
    return {k: v for k, v in models[family].items() if k not in OVERRIDDEN}


def config(section: dict, models: dict, family: str, seed: int, train: dict | None = None):
    """The TrainConfig of one run: the family's architecture under the section's protocol
    (``train`` supplies the run settings: determinism, graph optimizer, eager)."""
    from bloodcells.train import family_config

    params = {"models": {family: family_entry(models, family)}, "train": train or {}}
    return family_config(
        params,
        family,
        **section["recipe"],
        image_size=section["image_size"],
        epochs=section["epochs"],
        seed=seed,
        weights="none",
        frozen_fraction=0.0,
    )


def plan(params: dict) -> list[dict]:
    """Every run of the study: ``{"family", "seed", "key", "variant"}``, where
    ``models/<key>/<variant>/`` holds it (the schema :mod:`bloodcells.seed_report` reads)."""
    section = params[SECTION]
    return [
        {"family": family, "seed": seed, "key": SECTION, "variant": run_name(family, seed)}
        for family in section["families"]
        for seed in section["seeds"]
    ]


def train_matched(params: dict, root: Path | None = None, verbose: int = 2) -> list[dict]:
    """Train every planned run (unless trained under the same key), prune the runs no
    longer planned, write ``models/compute_matched/plan.json``. Returns the plan."""
    from bloodcells.seeds import train_planned

    section = params[SECTION]

    def config_of(run: dict):
        return config(section, params["models"], run["family"], run["seed"], params["train"])

    return train_planned(SECTION, plan(params), config_of, root or project_root(), verbose)


def main(argv: list[str] | None = None) -> int:
    from bloodcells.seeds import study_main

    def check(params: dict) -> None:
        check_params(params.get(SECTION), params["models"], params["preprocess"]["image_sizes"])

    return study_main(argv, __doc__, STAGE, SECTION, check, train_matched)


if __name__ == "__main__":
    raise SystemExit(main())
