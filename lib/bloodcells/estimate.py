"""``python -m bloodcells.estimate``: how long the study will take on this machine.

``make repro`` runs it before ``dvc repro``. It lists every training run the active profile
asks for (each family and optimizer, the cross-validation folds, the shuffling study's runs,
the training-side remedies, the hybrid's two phases, SupCon's pre-training, probe and
control), calibrates each model
configuration on this machine with a few real training and inference steps of
``model.fit`` on random images of the right size (the speed of a convolution does not depend
on the pixels, so no data is needed yet), and multiplies out. Calibrations are cached in
``.cache/estimate.json`` by machine and model configuration, so a second run costs
seconds. A run of fewer than :data:`MIN_STEPS` training steps (every run of the smoke
profile) is not calibrated: building and timing its model would take about as long as
training it; the estimate counts it apart. It is an estimate: the remedies are calibrated
as the plain CNN (GroupNorm and the stain layers cost more per step); tracing, evaluation
and the comparison stage add a few percent, and a shared or throttled host is slower.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bloodcells.config import load_params
from bloodcells.inputs import steps_per_epoch
from bloodcells.paths import manifest_path, project_root
from bloodcells.timing import describe_machine, hardware

#: images per class in the published dataset (Acevedo et al., Data in Brief 2020)
PBC_CLASS_COUNTS = {
    "basophil": 1218,
    "eosinophil": 3117,
    "erythroblast": 1551,
    "ig": 2895,
    "lymphocyte": 1214,
    "monocyte": 1420,
    "neutrophil": 3329,
    "platelet": 2348,
}


def smote_growth(counts: dict[str, int]) -> float:
    """How many times larger SMOTE makes a split with these class counts: it oversamples
    every class to the largest one."""
    return len(counts) * max(counts.values()) / sum(counts.values())


#: SMOTE's growth of a stratified training split of this dataset (about 1.56)
SMOTE_GROWTH = smote_growth(PBC_CLASS_COUNTS)

#: images the published dataset keeps after cleaning (README, Data): train / val / test
FULL_SPLIT = (9_560, 2_391, 5_123)


@dataclass(frozen=True)
class Run:
    """``epochs`` passes over ``train`` images (and ``val`` validation images) of one model."""

    stage: str
    what: str
    key: str  # params.yaml models entry
    overrides: tuple  # (name, value) pairs over the entry: image_size, conv_widths
    epochs: int
    train: int
    val: int
    views: int = 1  # SupCon trains on two views of each image
    frozen_epochs: int = 0  # epochs with every base frozen: forward passes only

    def config(self, params: dict, **extra):
        """The TrainConfig this run trains with."""
        from bloodcells.train import family_config

        overrides = {k: v for k, v in self.overrides if v is not None}
        return family_config(params, self.key, **overrides, **extra)


def split_sizes(params: dict, root: Path | None = None) -> tuple[int, int, int]:
    """Training, validation and test images: from the manifest when preprocessing has run,
    else the published dataset's (full data) or a count of the sample's files."""
    import pandas as pd

    manifest = manifest_path(root)
    if manifest.is_file():
        counts = pd.read_csv(manifest)["split"].value_counts()
        return int(counts.get("train", 0)), int(counts.get("val", 0)), int(counts.get("test", 0))
    if params["data"].get("expect_complete", True):
        return FULL_SPLIT
    folder = Path(params["data"]["sources"][0].get("path", "."))
    folder = folder if folder.is_absolute() else (root or project_root()) / folder
    n = sum(1 for p in folder.rglob("*") if p.is_file())
    test = round(n * params["preprocess"]["test_size"])
    val = round((n - test) * params["preprocess"]["val_size"])
    return n - test - val, val, test


def plan(params: dict, n_train: int, n_val: int, n_test: int = 0) -> list[Run]:
    """Every training run of the active profile, in DAG order."""
    models = params["models"]
    runs = []
    for key in ("cnn", "unet", "resnet50", "vgg16", "densenet201", "mobilenetv2"):
        runs += _family_runs(models, key, n_train, n_val)
    runs += study_runs(params, n_train, n_val, n_test)
    for key in ("inceptionv3", "xception", "hybrid", "supcon"):
        runs += _recipe_runs(models, key, n_train, n_val)
    return runs


def study_runs(params: dict, n_train: int, n_val: int, n_test: int) -> list[Run]:
    """The cross-validation folds (over train + val), the shuffling study's runs (the
    paper's protocol over every image: 70% train, of which the last 20% validates), the
    remedy runs of ``robust_training``, the seed spread's and the compute-matched runs,
    and the recipe ablation's."""
    runs = []
    cv = params["cross_validation"]
    over = (("image_size", cv["image_size"]), ("conv_widths", cv.get("conv_widths")))
    part, k = n_train + n_val, int(cv["folds"])
    grow = SMOTE_GROWTH if cv["balance"] == "smote" else 1.0
    inner = round(part * (k - 1) / k * float(cv["inner_val"]))
    train = round((part * (k - 1) / k - inner) * grow)
    for fold in range(k):
        runs.append(
            Run("cross-validation", f"CV fold {fold + 1}", cv["family"], over, cv["epochs"],
                train, inner)
        )  # fmt: skip
    sh = params["shuffling"]
    over = (("image_size", sh["image_size"]), ("conv_widths", sh.get("conv_widths")))
    whole = n_train + n_val + n_test
    training = whole - round(whole * float(sh["test_size"]))
    fit = int(training * (1 - float(sh["validation_split"])))
    for seed in sh["seeds"]:
        for condition in ("without", "with"):
            runs.append(
                Run("shuffling", f"shuffling {condition} seed {seed}", sh["family"], over,
                    sh["epochs"], fit, training - fit)
            )  # fmt: skip
    rb = params["robust_training"]  # one run per remedy and seed, each a CNN of this size
    over = (("image_size", rb["image_size"]), ("conv_widths", rb.get("conv_widths")))
    for seed in rb["seeds"]:
        for remedy in rb["remedies"]:
            runs.append(
                Run("train-robust", f"remedy {remedy} seed {seed}", rb["family"], over,
                    rb["epochs"], n_train, n_val)
            )  # fmt: skip
    from bloodcells.seeds import plan, recipe_runs

    # the seed spread: only the runs that are not a family's own, each recipe once per seed
    # (SupCon's control is one of SupCon's runs); ``epochs`` replaces the entry's own
    epochs = params["seed_spread"]["epochs"]
    for run in recipe_runs(plan(params)):
        parts = _recipe_runs(params["models"], run["entry"], n_train, n_val, epochs)
        for part in parts:
            what = f"{run['entry']} seed {run['seed']}"
            what += f" ({part.what})" if len(parts) > 1 or run["entry"] == "hybrid" else ""
            runs.append(replace(part, stage="train-seeds", what=what))
    from bloodcells import matched

    cm = params[matched.SECTION]  # every family under one protocol: its overrides are the study's
    for family in cm["families"]:
        over = (
            *sorted(cm["recipe"].items()),
            ("image_size", cm["image_size"]),
            ("weights", "none"),
            ("frozen_fraction", 0.0),
        )
        smote = cm["recipe"]["balance"] == "smote"
        for seed in cm["seeds"]:
            runs.append(
                Run(matched.STAGE, f"{family} seed {seed}", family, over, cm["epochs"],
                    round(n_train * SMOTE_GROWTH) if smote else n_train, n_val)
            )  # fmt: skip
    from bloodcells import ablation

    ab = params[ablation.SECTION]  # the base and each change under every seed
    for run in ablation.plan(params):
        cfg = ablation.config(params, ab, run["change"], run["seed"])
        over = tuple(sorted(run["settings"].items()))
        grow = SMOTE_GROWTH if cfg.balance == "smote" else 1.0
        runs.append(
            Run(ablation.STAGE, f"{run['change']} seed {run['seed']}", ab["base"], over,
                cfg.epochs, round(n_train * grow), n_val)
        )  # fmt: skip
    return runs


def _recipe_runs(
    models: dict, key: str, n_train: int, n_val: int, epochs: int | None = None
) -> list[Run]:
    """The runs that ``models.<key>``'s stage trains: each optimizer's variant, the hybrid's
    two phases as one run, or SupCon's pre-training, probe and control; ``epochs`` (when
    given) replaces the entry's own (the hybrid's joint phase, SupCon's pre-training and
    control)."""
    entry = models[key] if epochs is None else {**models[key], "epochs": epochs}
    if key == "hybrid":
        frozen = int(entry.get("frozen_epochs", 0))
        return [
            Run("hybrid", "joint + frozen phases", "hybrid", (), int(entry["epochs"]) + frozen,
                n_train, n_val, frozen_epochs=frozen)
        ]  # fmt: skip
    if key == "supcon":
        pre, probe = int(entry["epochs"]), int(entry["classifier_epochs"])
        return [
            Run("supcon", "contrastive pre-training", "supcon", (), pre, n_train, n_val, 2),
            Run("supcon", "classifier probe", "supcon", (), probe, n_train, n_val),
            Run("supcon", "cross-entropy control", "supcon", (), pre, n_train, n_val),
        ]
    return _family_runs({**models, key: entry}, key, n_train, n_val)


def _family_runs(models: dict, key: str, n_train: int, n_val: int) -> list[Run]:
    entry = models[key]
    train = round(n_train * SMOTE_GROWTH) if entry.get("balance") == "smote" else n_train
    return [
        Run(key, f"{key} ({opt})", key, (), int(entry["epochs"]), train, n_val)
        for opt in entry.get("optimizers") or ["adam"]
    ]


#: runs of fewer training steps than this are not calibrated (the calibration itself
#: builds the model and takes 4 steps; a run this short costs about as much)
MIN_STEPS = 40


def training_steps(run: Run, batch_size: int) -> int:
    """The steps ``run`` takes at ``batch_size``, counted as the trainer counts them (a
    short last batch is a step), its frozen epochs' included (forward passes, but steps:
    the hybrid's may be all it trains). SupCon's two views make each step costlier, not
    more numerous."""
    return run.epochs * steps_per_epoch(run.train, batch_size)


#: the calibration times at least this many training steps, and goes on to
#: CALIBRATION_MAX_STEPS while under CALIBRATION_SECONDS (bench.timed_fit): the 96 px CNN's
#: rate over 3 steps was off by 1.9x from its measured run (decision 020)
CALIBRATION_STEPS, CALIBRATION_MAX_STEPS, CALIBRATION_SECONDS = 3, 12, 8.0


def calibrate(
    params: dict,
    run: Run,
    steps: int = CALIBRATION_STEPS,
    warmup: int = 1,
    max_steps: int = CALIBRATION_MAX_STEPS,
    min_seconds: float = CALIBRATION_SECONDS,
) -> dict:
    """Training and inference images/s of ``run``'s model on random images, here: at least
    ``steps`` timed training steps, more (up to ``max_steps``) while under ``min_seconds``."""
    import numpy as np

    from bloodcells.bench import timed_fit
    from bloodcells.inference import predict_proba
    from bloodcells.inputs import make_dataset
    from bloodcells.train import compiled_classifier, configure_tensorflow

    cfg = run.config(params, deterministic=False)
    configure_tensorflow(cfg)
    batch = cfg.batch_size
    rng = np.random.default_rng(0)
    n = batch * (steps + warmup)  # the dataset repeats them
    x = rng.integers(0, 256, (n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    y = np.arange(n) % 8
    model = compiled_classifier(cfg, 1000)
    ds = make_dataset(x, y, batch, True, cfg.augment, cfg.seed, views=cfg.dihedral_views).repeat()
    model.fit(ds, steps_per_epoch=warmup, epochs=1, shuffle=False, verbose=0)
    timed = timed_fit(model, ds, steps, min_seconds=min_seconds, max_steps=max_steps)
    predict_proba(model, x[:batch])
    _, infer = predict_proba(model, x)
    return {"train": timed["steps"] * batch / timed["seconds"], "inference": infer}


def _calibration_key(cfg, machine: str, onednn_opts: str | None) -> str:
    text = json.dumps(
        [machine, cfg.family, cfg.image_size, cfg.conv_widths, cfg.dense_units,
         cfg.batch_size, cfg.optimizer, cfg.whitening,  # the stem's 24-54 channels cost
         CALIBRATION_STEPS, CALIBRATION_MAX_STEPS, CALIBRATION_SECONDS,  # how it is timed
         onednn_opts],  # which kernels (decision 021)
        default=str,
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def estimate(params: dict, root: Path | None = None, cache: Path | None = None) -> dict:
    """Seconds per training run and in all, from calibrations on this machine."""
    root = root or project_root()
    cache = cache or root / ".cache" / "estimate.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    n_train, n_val, n_test = split_sizes(params, root)
    hw = hardware()  # once: it reads /proc/cpuinfo and asks TF
    machine = describe_machine(hw)
    rows, short = [], []
    for run in plan(params, n_train, n_val, n_test):
        cfg = run.config(params)
        if training_steps(run, cfg.batch_size) < MIN_STEPS:
            short.append(run.what)
            continue
        key = _calibration_key(cfg, machine, hw["onednn_opts"])
        if key not in known:
            known[key] = calibrate(params, run)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known, indent=1))
        speed = known[key]
        trained = run.epochs - run.frozen_epochs
        seconds = (
            trained * run.views * run.train / speed["train"]
            + run.frozen_epochs * run.train / speed["inference"]
            + run.epochs * run.val / speed["inference"]
        )
        rows.append(
            {
                "stage": run.stage,
                "what": run.what,
                "epochs": run.epochs,
                "train_images_per_second": round(speed["train"], 1),
                "seconds": seconds,
            }
        )
    return {
        "machine": machine,
        "profile": params.get("profile"),
        "train_images": n_train,
        "runs": rows,
        "not_calibrated": short,  # under MIN_STEPS steps each: seconds, not minutes
        "total_seconds": sum(r["seconds"] for r in rows),
    }


def report(out: dict) -> str:
    """The estimate as a table, one line per stage."""
    stages: dict[str, float] = {}
    for r in out["runs"]:
        stages[r["stage"]] = stages.get(r["stage"], 0.0) + r["seconds"]
    lines = [
        f"Estimated training time, profile '{out['profile']}', {out['train_images']:,} "
        f"training images, on {out['machine']}:",
    ]
    lines += [f"  {stage:<16} {seconds / 60:7.1f} min" for stage, seconds in stages.items()]
    total = out["total_seconds"]
    lines.append(f"  {'all':<12} {total / 60:7.1f} min  (~{total / 3600:.1f} h, training only)")
    if out.get("not_calibrated"):
        lines.append(
            f"  not calibrated: {len(out['not_calibrated'])} runs of under {MIN_STEPS} steps "
            "each (timing one would take about as long as running it)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="override params.yaml's profile")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = estimate(load_params(profile=args.profile))
    print(report(out))
    print(f"  (calibrated in {time.perf_counter() - t0:.0f} s; cached in .cache/estimate.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
