"""The seed spread (stage ``train-seeds``; issue 16, part 3): headline models retrained with
other seeds, so a difference between two models is called real only when it exceeds both
the test-sampling CI and the seed-to-seed spread.

The ``seed_spread`` params section names the families (``runs``: ``models.<key>`` entries
with one optimizer) and the ``seeds``. Each family trains its own recipe under each seed:
a plain family its ``train@<key>`` recipe, the hybrid stage 10's two phases (from the
branches of stages 08 and 09 when ``from_stages``), SupCon stage 11's pre-training and probe
*and* its cross-entropy control, a model of its own in the report (:data:`OWN_RECIPES`).
``epochs`` (when set) trains every run of the study for that many epochs instead (the
hybrid's joint phase, SupCon's pre-training and control), and the reports say so. A run
whose config is the family's own (the family's seed, its epochs) *is* the family's run of
its stage (``models/<key>/<variant>``): it is read from there, not trained twice. The others
live in ``models/seed_spread/<variant>_s<seed>/`` (model, validation
and test predictions, record; trained once per training key, resumable), and
``models/seed_spread/plan.json`` lists where every planned run is. ``models/seed_spread``
persists when the stage reruns (``dvc.yaml``), so a run whose training key is unchanged is
reused and :func:`prune_runs` removes the runs no longer planned.

The report side (the seed table, the verdicts) is :mod:`bloodcells.seed_report`, apart, so
editing it retrains nothing.
"""

from __future__ import annotations

from pathlib import Path

from bloodcells.config import ParamsError
from bloodcells.paths import project_root, resolve, write_json

SECTION = "seed_spread"
#: the folder the study's own runs live in: models/seed_spread/
SECTION_KEY = "seed_spread"
#: models entries with a training path of their own, and the runs (variants) each makes:
#: the hybrid (stage 10's two phases) and SupCon with its cross-entropy control (stage 11)
OWN_RECIPES = {"hybrid": ("hybrid",), "supcon": ("supcon", "supcon_ce_control")}


def check_params(section: dict | None, models: dict) -> dict:
    """The ``seed_spread`` section, checked; errors name the key and what to do."""
    if not isinstance(section, dict):
        raise ParamsError(f"Params key '{SECTION}' must be a mapping; got {section!r}.")
    for key in ("runs", "seeds", "epochs"):
        if key not in section:
            raise ParamsError(f"Missing params key '{SECTION}.{key}' in params.yaml.")
    runs = section["runs"]
    if not isinstance(runs, list) or len(set(runs)) != len(runs):
        raise ParamsError(
            f"Params key '{SECTION}.runs' must be a list of distinct 'models' entries; "
            f"got {runs!r}."
        )
    for name in runs:
        if name not in models:
            raise ParamsError(
                f"Params key '{SECTION}.runs' has {name!r}; it must name a 'models' entry "
                f"({', '.join(models)})."
            )
        optimizers = models[name].get("optimizers") or ["adam"]
        if len(optimizers) != 1:
            raise ParamsError(
                f"Params key '{SECTION}.runs' has {name!r}, whose 'models.{name}.optimizers' "
                f"lists {len(optimizers)} optimizers; seed a family with one."
            )
    seeds = section["seeds"]
    if (
        not isinstance(seeds, list)
        or len(seeds) < 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ParamsError(
            f"Params key '{SECTION}.seeds' must list two or more distinct integers >= 0 "
            f"(three or more for a spread worth reading); got {seeds!r}."
        )
    epochs = section["epochs"]
    if epochs is not None and (
        not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1
    ):
        raise ParamsError(
            f"Params key '{SECTION}.epochs' must be null (each family's own) or an integer "
            f">= 1; got {epochs!r}."
        )
    return section


def prune_runs(key: str, keep: set[str], root: Path) -> list[str]:
    """Remove the run folders of ``models/<key>/`` and ``dvclive/<key>/`` that are not in
    ``keep`` (a family or seed dropped from the section): a persistent output holds exactly
    the planned runs. Returns the names removed."""
    import shutil

    removed = set()
    for top in ("models", "dvclive"):
        folder = resolve(Path(top) / key, root)
        for child in sorted(folder.iterdir()) if folder.is_dir() else []:
            if child.is_dir() and child.name not in keep:
                shutil.rmtree(child)
                removed.add(child.name)
    return sorted(removed)


def ensure_config_run(key: str, variant: str, cfg, root: Path, verbose: int = 2) -> dict:
    """The run ``models/<key>/<variant>/`` of ``cfg`` (a TrainConfig): trained on the
    training split and selected on validation (:func:`bloodcells.experiment.ensure_run`),
    unless trained under the same key. The seeded studies' one way to train a config."""
    from bloodcells.experiment import ensure_run
    from bloodcells.train import train_model

    def train(dirs: dict, data: dict):
        (x_tr, y_tr), (x_val, y_val) = data["train"], data["val"]
        result = train_model(
            cfg, x_tr, y_tr, x_val, y_val, dirs["work"], dirs["live"], verbose=verbose
        )
        return result, {}

    return ensure_run(key, variant, cfg, train, root, verbose)


def train_planned(key: str, planned: list[dict], config_of, root: Path, verbose: int = 2) -> list:
    """A seeded study's runs (``config_of(run)``: each one's TrainConfig) trained into
    ``models/<key>/<variant>/`` unless trained under the same key; the runs no longer
    planned pruned; ``models/<key>/plan.json`` written. Returns ``planned``."""
    for run in planned:
        ensure_config_run(key, run["variant"], config_of(run), root, verbose)
    prune_runs(key, {r["variant"] for r in planned}, root)
    resolve(Path("dvclive") / key, root).mkdir(parents=True, exist_ok=True)  # a stage output
    write_json(resolve(Path("models") / key / "plan.json", root), {"runs": planned})
    return planned


def study_main(argv: list[str] | None, doc: str, stage: str, key: str, check, train) -> int:
    """The command of a study's training stage: ``check(params)``, then ``train(params)``
    (the plan) timed into ``metrics/timings/train-<key>.json``, and one line said."""
    from bloodcells.timing import timed_stage

    def work(params: dict) -> list[dict]:
        check(params)
        return train(params)

    planned, minutes = timed_stage(argv, doc, key, work)
    print(f"{stage}: {len(planned)} runs in models/{key}/ in {minutes:.1f} min")
    return 0


def run_name(family: str, seed: int) -> str:
    return f"{family}_s{seed}"


def plan(params: dict) -> list[dict]:
    """Every run of the study: ``{"family", "seed", "key", "variant", "entry"}``, where
    ``models/<key>/<variant>/`` holds it: the family's own run (``train@<family>``, or the
    hybrid's and SupCon's stages) when the seed and epochs are the family's, else a run of
    this study. ``family`` names the model compared (SupCon's control is one of its own);
    ``entry`` the ``models`` entry that trains it."""
    from bloodcells.train import family_config

    section = params[SECTION]
    out = []
    for entry in section["runs"]:
        own = family_config(params, entry)
        for seed in section["seeds"]:
            reused = seed == own.seed and section["epochs"] in (None, own.epochs)
            for family in OWN_RECIPES.get(entry, (entry,)):
                key, variant = (entry, family) if reused else (SECTION_KEY, run_name(family, seed))
                out.append(
                    {"family": family, "seed": seed, "key": key, "variant": variant, "entry": entry}
                )
    return out


def recipe_runs(planned: list[dict]) -> list[dict]:
    """The planned runs this study trains, one per recipe and seed: a family's own runs
    left out, and SupCon's control, which its recipe trains beside it."""
    seen, out = set(), []
    for run in planned:
        if run["key"] == SECTION_KEY and (run["entry"], run["seed"]) not in seen:
            seen.add((run["entry"], run["seed"]))
            out.append(run)
    return out


def train_seeds(params: dict, root: Path | None = None, verbose: int = 2) -> list[dict]:
    """Train every planned run of this study that is not a family's own run (unless trained
    under the same key); write ``models/seed_spread/plan.json``. Returns the plan."""
    from bloodcells.train import family_config

    root = root or project_root()
    section = params[SECTION]
    planned = plan(params)
    for run in recipe_runs(planned):
        entry = run["entry"]
        overrides = {"seed": run["seed"]}
        if section["epochs"] is not None:
            overrides["epochs"] = section["epochs"]
        if entry == "hybrid":
            from bloodcells.hybrid import train_hybrid

            train_hybrid(params, root, verbose, SECTION_KEY, run["variant"], **overrides)
        elif entry == "supcon":
            from bloodcells.supcon import train_supcon

            names = tuple(run_name(f, run["seed"]) for f in OWN_RECIPES[entry])
            train_supcon(params, root, verbose, SECTION_KEY, names, **overrides)
        else:
            cfg = family_config(params, entry, **overrides)
            ensure_config_run(SECTION_KEY, run["variant"], cfg, root, verbose)
    own = {r["variant"] for r in planned if r["key"] == SECTION_KEY}
    prune_runs(SECTION_KEY, own, root)
    write_json(resolve(Path("models") / SECTION_KEY / "plan.json", root), {"runs": planned})
    return planned


def main(argv: list[str] | None = None) -> int:
    from bloodcells.timing import timed_stage

    def work(params: dict) -> list[dict]:
        check_params(params.get(SECTION), params["models"])
        return train_seeds(params)

    planned, minutes = timed_stage(argv, __doc__, SECTION_KEY, work)
    trained = sum(r["key"] == SECTION_KEY for r in planned)
    print(
        f"train-seeds: {len(planned)} runs ({trained} in models/{SECTION_KEY}/, the rest the "
        f"families' own) in {minutes:.1f} min"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
