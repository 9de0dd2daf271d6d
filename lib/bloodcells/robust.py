"""Remedies during training (stage ``train-robust``, notebook 15; issue 18, part 3).

The study's CNN recipe (``models.<family>``) trained once per remedy and seed, all at the
settings of the ``robust_training`` section, so the remedies differ from the baseline in
the remedy alone:

* ``none``: the recipe as it is (the baseline of this comparison);
* ``stain_augmentation``: :class:`bloodcells.stain.RandomStainColour` at the input,
  active in training only;
* ``groupnorm``: every BatchNormalization replaced by GroupNormalization, whose
  statistics are each image's own (Tsutsui et al. 2023): nothing learnt from PBC's batches
  to go stale on another lab's; trained at ``groupnorm_learning_rate`` (at the recipe's
  Adam 1e-3 it fell to chance on validation);
* ``stain_normalisation``: :class:`bloodcells.stain.StainNormalisation` (Reinhard) at the
  input, to the training split's L*a*b* statistics, in training and inference;
* ``normalisation_augmentation``: both, the jitter after the normalisation (in training
  only), so the model learns on normalised colours and on variation around them.

Each run is a study run like any other (``models/robust/<remedy>_s<seed>/``: model,
validation and test predictions, record; trained once per training key, resumable). Then
every run is scored on a stratified subset of the validation split and of the test split,
clean and under every shift of the benchmark (:mod:`bloodcells.shift`):
``models/robust/shift.json``. Notebook 15 (:mod:`bloodcells.remedy_report`) chooses on the
validation rows and reports the test rows. The runs' training key covers this module and
:mod:`bloodcells.stain`; the report code lives apart, so editing it retrains nothing.
``models/robust`` is a persistent output (``dvc.yaml``): DVC keeps it when the stage
reruns, so every run whose training key is unchanged is reused (a changed setting of one
remedy retrains that remedy alone) and :func:`prune_runs` removes the runs no longer
planned.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bloodcells.paths import project_root, resolve
from bloodcells.remedies import SECTION, SECTION_KEY, check_params

#: the remedies with Reinhard normalisation at the input, and those with the stain jitter
NORMALISED = ("stain_normalisation", "normalisation_augmentation")
AUGMENTED = ("stain_augmentation", "normalisation_augmentation")


def groupnorm_copy(model, groups: int):
    """A fresh copy of ``model`` (new weights) with every BatchNormalization layer a
    GroupNormalization of at most ``groups`` groups (the largest divisor of its channels)."""
    import keras

    def swap(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = int(layer.gamma.shape[0])
            g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
            return keras.layers.GroupNormalization(g, name=layer.name.replace("_bn", "_gn"))
        return layer.__class__.from_config(layer.get_config())

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.GroupNormalization):  # no mask or training kwargs
            return layer(*args)
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=swap, call_function=call, recursive=True)


def remedy_model(remedy: str, cfg, section: dict, x_train: np.ndarray):
    """The uncompiled classifier for ``remedy``: the family's model, changed by it."""
    import keras

    from bloodcells.models import build_model
    from bloodcells.stain import RandomStainColour, StainNormalisation, lab_statistics

    base = build_model(
        cfg.family,
        cfg.image_size,
        8,
        cfg.weights,
        cfg.dense_units,
        cfg.dropout,
        cfg.frozen_fraction,
        cfg.conv_widths,
        cfg.cnn_options(),
    )
    if remedy == "none":
        return base
    if remedy == "groupnorm":
        return groupnorm_copy(base, section["groupnorm_groups"])
    inputs = keras.Input(base.input_shape[1:], name="pixels")
    x = inputs
    if remedy in NORMALISED:
        x = StainNormalisation(lab_statistics(x_train), name="stain_normalisation")(x)
    if remedy in AUGMENTED:  # after the normalisation: the jitter survives it
        x = RandomStainColour(section["augmentation_strength"], cfg.seed, name="stain_jitter")(x)
    return keras.Model(inputs, base(x), name=f"{cfg.family}_{remedy}")


def remedy_overrides(remedy: str, section: dict) -> dict:
    """What a remedy changes in the recipe's training config: GroupNorm trains at its own
    learning rate (at the recipe's 1e-3 it fell to chance: decision 014)."""
    if remedy == "groupnorm":
        return {"learning_rate": section["groupnorm_learning_rate"]}
    return {}


def run_name(remedy: str, seed: int) -> str:
    return f"{remedy}_s{seed}"


def train_remedies(params: dict, root: Path | None = None, verbose: int = 2) -> list[dict]:
    """Every remedy at every seed, trained unless trained under the same key; their
    training records (``models/robust/<remedy>_s<seed>/run.json``)."""
    from bloodcells.experiment import ensure_run, source_hash, study_config
    from bloodcells.train import configure_tensorflow, distribution_strategy, train_model

    root = root or project_root()
    section = params[SECTION]
    code = source_hash(__file__, Path(__file__).with_name("stain.py"))
    records = []
    for seed in section["seeds"]:
        for remedy in section["remedies"]:
            cfg = study_config(params, SECTION, seed=seed, **remedy_overrides(remedy, section))

            def train(dirs: dict, data: dict, remedy: str = remedy, cfg=cfg):
                (x_tr, y_tr), (x_val, y_val) = data["train"], data["val"]
                configure_tensorflow(cfg)  # the same initial weights for every remedy
                with distribution_strategy().scope():
                    model = remedy_model(remedy, cfg, section, x_tr)
                result = train_model(
                    cfg, x_tr, y_tr, x_val, y_val, dirs["work"], dirs["live"],
                    verbose=verbose, model=model,
                )  # fmt: skip
                return result, {"remedy": remedy}

            extra = {"remedy": remedy, "code": code}
            if remedy in AUGMENTED:
                extra["strength"] = section["augmentation_strength"]
            if remedy == "groupnorm":
                extra["groups"] = section["groupnorm_groups"]
            records.append(
                ensure_run(SECTION_KEY, run_name(remedy, seed), cfg, train, root, verbose, **extra)
            )
    prune_runs(root, {r["variant"] for r in records})
    return records


def prune_runs(root: Path, keep: set[str]) -> list[str]:
    """Remove the run folders of ``models/robust/`` and ``dvclive/robust/`` that are not in
    ``keep`` (a remedy or seed dropped from the section): the stage's outputs persist
    between runs, and hold exactly the planned runs. Returns the names removed."""
    from bloodcells.seeds import prune_runs as prune_study_runs

    return prune_study_runs(SECTION_KEY, keep, root)


def shift_scores(params: dict, records: list[dict], root: Path | None = None) -> pd.DataFrame:
    """Every run on the validation and test subsets, clean and under every shift and
    severity (:func:`bloodcells.shift.benchmark`), one row per run, split, shift and
    severity; kept in ``models/robust/shift.json`` under the runs' training keys."""
    from bloodcells.experiment import keyed, load_splits, source_hash
    from bloodcells.shift import benchmark, stratified_subset

    root = root or project_root()
    section = params[SECTION]
    seed = section["shift_seed"]
    tkey = source_hash(__file__) + "".join(r["training_key"] for r in records)
    tkey += repr([section[k] for k in ("val_images", "test_images", "severities")]) + str(seed)

    def compute() -> dict:
        import bloodcells.stain  # noqa: F401 - registers the layers the models hold
        from bloodcells.inference import predict_proba
        from bloodcells.models import load_saved

        data = load_splits(section["image_size"], root)
        subsets = {}
        for split, n in (("val", section["val_images"]), ("test", section["test_images"])):
            x, y = data[split]
            keep = stratified_subset(np.asarray(y), n, seed)
            subsets[split] = (np.asarray(x)[keep], np.asarray(y)[keep])
        rows = []
        for r in records:
            model = load_saved(
                resolve(Path("models") / SECTION_KEY / r["variant"], root) / "model.keras"
            )
            for split, (x, y) in subsets.items():
                table = benchmark(
                    lambda _, batch, model=model: predict_proba(model, batch)[0],
                    {r["variant"]: section["image_size"]},
                    {section["image_size"]: x},
                    y,
                    severities=tuple(section["severities"]),
                    seed=seed,
                )
                table.insert(1, "split", split)
                table.insert(2, "remedy", r["remedy"])
                table.insert(3, "seed", r["seed"])
                rows.append(table)
        return {"rows": pd.concat(rows).to_dict("records")}

    path = resolve(Path("models") / SECTION_KEY / "shift.json", root)
    return pd.DataFrame(keyed(path, hashed(tkey), compute)["rows"])


def hashed(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    from bloodcells.timing import timed_stage

    def work(params: dict) -> tuple[list, pd.DataFrame]:
        check_params(params.get(SECTION), params["models"])
        records = train_remedies(params)
        return records, shift_scores(params, records)

    (records, scores), minutes = timed_stage(argv, __doc__, SECTION_KEY, work)
    print(
        f"train-robust: {len(records)} runs, {len(scores)} scored cases in models/{SECTION_KEY}/ "
        f"({math.ceil(minutes)} min)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
