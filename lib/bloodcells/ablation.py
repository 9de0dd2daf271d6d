"""The recipe ablation (stage ``train-ablation``; issue 14, part 5): the from-scratch model's
recipe changed one thing at a time, each change kept only when it helps on **validation**
by more than its seed spread.

The ``ablation`` params section names the ``base`` (a ``models`` entry trained by its
``train@<key>`` stage: its whole recipe is the starting point), the ``seeds`` every run
trains under, ``epochs`` (null: the base's own; else every run's, the reports say so),
``run`` (the changes trained: ``[]``, a list of names from ``changes``, or ``all``; no
CPU profile trains any, the study runs on demand with ``dvc exp run -S ablation.run=all``) and
``changes``: ``{name: {setting: value}}``, each a few :class:`bloodcells.train.TrainConfig`
settings (:data:`CHANGE_KEYS`: the EMA of the weights, a warm-up, label smoothing, widths,
BatchNorm without a learned scale, a frozen patch-whitening stem, progressive resizing,
image size, learning rate, ...) tried alone against the base. The base and every change
train under every seed, in ``models/ablation/<name>_s<seed>/`` (model, validation and test
predictions, record; trained once per training key, resumable), beside
``models/ablation/plan.json``; the output persists (``dvc.yaml``), so a new change trains
alone and :func:`bloodcells.seeds.prune_runs` removes the runs no longer planned. Not run,
or with no changes, the study trains nothing: 8 recipes x 3 seeds x 4 epochs of the 96 px
CNN are about 290 training minutes on a 2-core AVX2 CPU, more than either CPU profile's
budget leaves (decision 025).

The verdicts (:mod:`bloodcells.ablation_report`) read validation predictions only: the
test split is scored once, for the final model, never to pick a change.
"""

from __future__ import annotations

import re
from pathlib import Path

from bloodcells.config import ParamsError
from bloodcells.paths import project_root
from bloodcells.seeds import OWN_RECIPES  # entries with a training path of their own

SECTION = "ablation"
STAGE = "train-ablation"
TIMINGS = f"train-{SECTION}"
#: the run every change is compared with
BASE = "base"
#: ``ablation.run``'s value that trains every change
ALL = "all"
#: the settings a change may set (TrainConfig fields)
CHANGE_KEYS = (
    "ema_momentum",
    "warmup_fraction",
    "label_smoothing",
    "learning_rate",
    "optimizer",
    "batch_size",
    "dense_units",
    "dropout",
    "conv_widths",
    "image_size",
    "epochs",
    "augment",
    "dihedral_views",
    "balance",
    "bn_momentum",
    "bn_scale",
    "whitening",
    "progressive_from",
)
NAME = re.compile(r"^[a-z0-9_]+$")


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_params(section: dict | None, params: dict) -> dict:
    """The ``ablation`` section, checked against ``models`` and the cached sizes; every
    error names the key and what to do."""
    if not isinstance(section, dict):
        raise ParamsError(f"Params key '{SECTION}' must be a mapping; got {section!r}.")
    for key in ("base", "seeds", "epochs", "run", "changes"):
        if key not in section:
            raise ParamsError(f"Missing params key '{SECTION}.{key}' in params.yaml.")
    base, models = section["base"], params["models"]
    if base not in models or base in OWN_RECIPES:
        plain = [k for k in models if k not in OWN_RECIPES]
        raise ParamsError(
            f"Params key '{SECTION}.base' is {base!r}; it must name a 'models' entry trained "
            f"by its train@ stage ({', '.join(plain)})."
        )
    if len(models[base].get("optimizers") or ["adam"]) != 1:
        raise ParamsError(
            f"Params key '{SECTION}.base' is {base!r}, whose 'models.{base}.optimizers' lists "
            "several optimizers; the base must be one recipe."
        )
    changes = section["changes"]
    if not isinstance(changes, dict):
        raise ParamsError(
            f"Params key '{SECTION}.changes' must be a mapping of name to settings "
            f"(empty: the study trains nothing); got {changes!r}."
        )
    run = section["run"]
    if run != ALL and (
        not isinstance(run, list)
        or not all(isinstance(name, str) and name in changes for name in run)
        or len(set(run)) != len(run)
    ):
        raise ParamsError(
            f"Params key '{SECTION}.run' must be '{ALL}' or a list of distinct names from "
            f"'{SECTION}.changes' ({', '.join(changes) or 'none'}; [] trains nothing); got "
            f"{run!r}."
        )
    seeds, chosen = section["seeds"], selected(section)
    if (
        not isinstance(seeds, list)
        or not all(_is_int(s, 0) for s in seeds)
        or len(set(seeds)) != len(seeds)
        or (chosen and len(seeds) < 2)
    ):
        raise ParamsError(
            f"Params key '{SECTION}.seeds' must list two or more distinct integers >= 0 "
            f"(a change is kept only beyond its seed spread); got {seeds!r}."
        )
    epochs = section["epochs"]
    if epochs is not None and not _is_int(epochs, 1):
        raise ParamsError(
            f"Params key '{SECTION}.epochs' must be null (the base's own) or an integer >= 1; "
            f"got {epochs!r}."
        )
    sizes = params["preprocess"]["image_sizes"]
    for name, change in changes.items():
        where = f"{SECTION}.changes.{name}"
        if not isinstance(name, str) or not NAME.match(name) or name == BASE:
            raise ParamsError(
                f"Params key '{where}': a change's name must be lower-case letters, digits "
                f"and '_', and not '{BASE}' (the unchanged recipe)."
            )
        if not isinstance(change, dict) or not change:
            raise ParamsError(
                f"Params key '{where}' must map one or more settings to values; got {change!r}."
            )
        unknown = sorted(set(change) - set(CHANGE_KEYS))
        if unknown:
            raise ParamsError(
                f"Params key '{where}' sets {', '.join(unknown)}; a change may set "
                f"{', '.join(CHANGE_KEYS)}."
            )
        size = change.get("image_size")
        if size is not None and size not in sizes:
            raise ParamsError(
                f"Params key '{where}.image_size' is {size!r}, which is not among the cached "
                f"sizes 'preprocess.image_sizes' {sizes}; add it there."
            )
    # every value of a run in range, named by this section's key (a change not run may not
    # fit this profile's base: smoke's 32 px CNN cannot grow from 64 px; it is checked
    # when `run` selects it)
    for name in [BASE, *chosen]:
        try:
            config(params, section, name, seeds[0] if seeds else 0)
        except Exception as err:  # noqa: BLE001 - ModelConfigError or a bad value's TypeError
            raise ParamsError(f"{err} (from '{SECTION}.changes.{name}')") from None
    return section


def config(params: dict, section: dict, name: str, seed: int):
    """The TrainConfig of one run: the base's recipe with change ``name``'s settings (none
    for the base), ``epochs`` when the section sets it, under ``seed``."""
    from bloodcells.train import family_config

    overrides = {"seed": seed}
    if section["epochs"] is not None:
        overrides["epochs"] = section["epochs"]
    if name != BASE:
        overrides.update(section["changes"][name])
    return family_config(params, section["base"], **overrides)


def selected(section: dict) -> dict:
    """``{name: settings}`` of the changes ``section["run"]`` trains, in their order."""
    run, changes = section["run"], section["changes"]
    return dict(changes) if run == ALL else {n: changes[n] for n in changes if n in run}


def run_name(name: str, seed: int) -> str:
    return f"{name}_s{seed}"


def plan(params: dict) -> list[dict]:
    """Every run: ``{"change", "seed", "key", "variant", "settings"}``, the base first;
    none when ``run`` selects no change."""
    section = params[SECTION]
    changes = selected(section)
    if not changes:
        return []
    return [
        {
            "change": name,
            "seed": seed,
            "key": SECTION,
            "variant": run_name(name, seed),
            "settings": {} if name == BASE else dict(changes[name]),
        }
        for name in [BASE, *changes]
        for seed in section["seeds"]
    ]


def train_ablation(params: dict, root: Path | None = None, verbose: int = 2) -> list[dict]:
    """Train every planned run (unless trained under the same key), prune the runs no
    longer planned, write ``models/ablation/plan.json``. Returns the plan."""
    from bloodcells.seeds import train_planned

    section = params[SECTION]

    def config_of(run: dict):
        return config(params, section, run["change"], run["seed"])

    return train_planned(SECTION, plan(params), config_of, root or project_root(), verbose)


def main(argv: list[str] | None = None) -> int:
    from bloodcells.seeds import study_main

    def check(params: dict) -> None:
        check_params(params.get(SECTION), params)

    return study_main(argv, __doc__, STAGE, SECTION, check, train_ablation)


if __name__ == "__main__":
    raise SystemExit(main())
