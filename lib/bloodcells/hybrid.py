"""Stage 10: the hybrid InceptionV3 + Xception model, trained in the paper's two phases."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bloodcells.experiment import ensure_run, evaluate_run, read_run
from bloodcells.families import HYBRID_BRANCHES
from bloodcells.paths import project_root, resolve
from bloodcells.train import (
    TrainConfig,
    TrainResult,
    configure_tensorflow,
    distribution_strategy,
    family_config,
    train_model,
)

KEY = "hybrid"


def train_hybrid(
    params: dict,
    root: Path | None = None,
    verbose: int = 2,
    key: str = KEY,
    variant: str = KEY,
    **overrides,
) -> dict:
    """Phase 1: train the hybrid jointly; phase 2: more epochs with both bases frozen.

    With ``models.hybrid.from_stages`` the branches start from the InceptionV3 and Xception
    that stages 08 and 09 trained (their training keys are part of this run's); otherwise
    both are built from ``weights``. The phase with the better validation accuracy is kept
    (unless trained before under the same key). The run is ``models/<key>/<variant>/``
    (stage 10's by default; the seed spread's under another seed); ``overrides`` (``seed``,
    ``epochs``: the joint phase's) replace ``models.hybrid``'s. Returns the training record.
    """
    root = root or project_root()
    entry = params["models"][KEY]
    cfg = family_config(params, KEY, **overrides)
    cfg2 = dataclasses.replace(cfg, epochs=int(entry["frozen_epochs"]))
    cfg_total = dataclasses.replace(cfg, epochs=cfg.epochs + cfg2.epochs)
    branch_keys = (
        {f: read_run(f, f, root)["training_key"] for f in HYBRID_BRANCHES}
        if entry["from_stages"]
        else {}
    )

    def train(dirs: dict, data: dict):
        from bloodcells.models import branch_backbone, build_hybrid

        configure_tensorflow(cfg)  # seeds first: the head's weights and dropout seeds
        branches = {}
        with distribution_strategy().scope():
            if entry["from_stages"]:
                branches = {
                    family: branch_backbone(
                        resolve(Path("models") / family / family / "model.keras", root),
                        family,
                        cfg.image_size,
                    )
                    for family in HYBRID_BRANCHES
                }
            model = build_hybrid(
                cfg.image_size, 8, cfg.weights, cfg.dense_units, cfg.dropout, branches
            )
        chosen, phases = train_phases(cfg, cfg2, model, data, dirs, verbose)
        extra = {
            "from_stages": bool(entry["from_stages"]),
            "joint_epochs": cfg.epochs,
            "frozen_epochs": cfg2.epochs,
            **phases,
        }
        return chosen, extra

    return ensure_run(
        key,
        variant,
        cfg_total,
        train,
        root,
        verbose,
        frozen_epochs=cfg2.epochs,
        from_stages=bool(entry["from_stages"]),
        branches=branch_keys,
    )


def train_phases(
    cfg: TrainConfig,
    cfg2: TrainConfig,
    model,
    data: dict,
    dirs: dict,
    verbose: int = 2,
    freeze=None,
) -> tuple[TrainResult, dict]:
    """The two phases: ``cfg.epochs`` joint, then ``cfg2.epochs`` with ``freeze`` applied
    (default: :func:`bloodcells.models.freeze_branches`); with no joint epochs, the frozen
    phase alone (the paper's second hybrid run: only the head trains).

    Phase 2 trains a copy of the joint phase's selected model, so each phase keeps its own
    best-validation weights; the phase with the better validation accuracy is returned (its
    model is the one scored and saved), with its record.
    """
    import keras

    from bloodcells.models import freeze_branches

    freeze = freeze or freeze_branches
    (x_tr, y_tr), (x_val, y_val) = data["train"], data["val"]

    def train_phase(name: str, config: TrainConfig, net) -> TrainResult:
        return train_model(
            config, x_tr, y_tr, x_val, y_val, dirs["work"] / name, dirs["live"] / name,
            model=net, verbose=verbose,
        )  # fmt: skip

    if cfg.epochs == 0:  # no joint phase: the head alone on the frozen branches
        frozen = train_phase("frozen", cfg2, freeze(model))
        return frozen, {
            "selected_phase": "frozen",
            "val_accuracy_joint": None,
            "val_accuracy_frozen": float(frozen.history["val_accuracy"].max()),
        }
    joint = train_phase("joint", cfg, model)
    with distribution_strategy().scope():
        copy = keras.models.clone_model(joint.model)
        copy.set_weights(joint.model.get_weights())
    frozen = train_phase("frozen", cfg2, freeze(copy))
    best_joint = float(joint.history["val_accuracy"].max())
    best_frozen = float(frozen.history["val_accuracy"].max())
    phase = "frozen" if best_frozen > best_joint else "joint"
    chosen = dataclasses.replace(
        frozen if phase == "frozen" else joint,
        seconds=joint.seconds + frozen.seconds,
        history=_concat_phases(joint.history, frozen.history),
    )
    return chosen, {
        "selected_phase": phase,
        "val_accuracy_joint": best_joint,
        "val_accuracy_frozen": best_frozen,
    }


def run_hybrid(params: dict, root: Path | None = None, verbose: int = 2) -> dict:
    """The hybrid, trained if needed (:func:`train_hybrid`), scored on the test split."""
    return evaluate_run(params, train_hybrid(params, root, verbose), root)


def _concat_phases(a, b):
    import pandas as pd

    b = b.copy()
    b.index = b.index + len(a)
    return pd.concat([a, b])
