"""Stage 10: the hybrid InceptionV3 + Xception model, trained in the paper's two phases."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bloodcells.experiment import finish_run, load_splits, run_dirs
from bloodcells.models import HYBRID_BRANCHES, branch_backbone, build_hybrid, freeze_branches
from bloodcells.paths import project_root, resolve
from bloodcells.train import distribution_strategy, family_config, train_model

KEY = "hybrid"


def run_hybrid(params: dict, root: Path | None = None, verbose: int = 2) -> dict:
    """Phase 1: train the hybrid jointly; phase 2: more epochs with both bases frozen.

    With ``models.hybrid.from_stages`` the branches start from the InceptionV3 and Xception
    that stages 08 and 09 trained; otherwise both are built from ``weights``. The model of
    the phase with the better validation accuracy is scored on the test split once.
    """
    root = root or project_root()
    entry = params["models"][KEY]
    cfg = family_config(params, KEY)
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
        model = build_hybrid(cfg.image_size, 8, cfg.weights, cfg.dense_units, cfg.dropout, branches)
    data = load_splits(cfg.image_size, root)
    (x_tr, y_tr), (x_val, y_val) = data["train"], data["val"]
    dirs = run_dirs(KEY, KEY, cfg, root)
    joint = train_model(
        cfg,
        x_tr,
        y_tr,
        x_val,
        y_val,
        dirs["work"] / "joint",
        dirs["live"] / "joint",
        model=model,
        verbose=verbose,
    )
    cfg2 = dataclasses.replace(cfg, epochs=int(entry["frozen_epochs"]))
    frozen = train_model(
        cfg2,
        x_tr,
        y_tr,
        x_val,
        y_val,
        dirs["work"] / "frozen",
        dirs["live"] / "frozen",
        model=freeze_branches(joint.model),
        verbose=verbose,
    )
    best_joint = float(joint.history["val_accuracy"].max())
    best_frozen = float(frozen.history["val_accuracy"].max())
    phase = "frozen" if best_frozen >= best_joint else "joint"
    chosen = dataclasses.replace(
        frozen if phase == "frozen" else joint,
        seconds=joint.seconds + frozen.seconds,
        history=_concat_phases(joint.history, frozen.history),
    )
    extra = {
        "from_stages": bool(entry["from_stages"]),
        "joint_epochs": cfg.epochs,
        "frozen_epochs": cfg2.epochs,
        "selected_phase": phase,
        "val_accuracy_joint": best_joint,
        "val_accuracy_frozen": best_frozen,
    }
    cfg_total = dataclasses.replace(cfg, epochs=cfg.epochs + cfg2.epochs)
    return finish_run(params, KEY, KEY, cfg_total, chosen, data, dirs, root, extra)


def _concat_phases(a, b):
    import pandas as pd

    b = b.copy()
    b.index = b.index + len(a)
    return pd.concat([a, b])
