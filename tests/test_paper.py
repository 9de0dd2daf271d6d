"""The paper's numbers: printed tables, its notebooks' outputs, and like-with-like pairing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bloodcells import paper, report


def test_audit_shows_printed_and_notebook_values_where_they_differ():
    rows = {(r["model"], r["condition"]): r for r in paper.audit_rows()}
    assert len(rows) == 2 * len(paper.PRINTED)
    xception = rows[("xception", "unshuffled")]
    assert (xception["printed (table)"], xception["notebook"]) == (89.84, 97.17)
    assert xception["differs"] == "yes"
    # U-Net's two conditions are swapped in the paper
    unet = [rows[("unet", c)] for c in paper.CONDITIONS]
    assert [r["printed (table)"] for r in unet] == [r["notebook"] for r in reversed(unet)]
    dense = rows[("densenet201", "unshuffled")]
    assert (dense["printed (table)"], dense["notebook"]) == (90.17, 90.41)
    assert rows[("inceptionv3", "shuffled")]["differs"] == ""  # agrees with its notebook
    for name in ("cnn", "mobilenetv2", "supcon"):  # the unreadable notebook
        assert math.isnan(rows[(name, "unshuffled")]["notebook"])
        assert rows[(name, "unshuffled")]["differs"] == "unknown"
    assert rows[("mobilenetv2", "unshuffled")]["printed (text)"] == 81.45
    assert "test split is the validation data" in rows[("vgg16", "unshuffled")]["protocol notes"]
    assert "not a U-Net" in rows[("unet", "unshuffled")]["protocol notes"]


@pytest.mark.parametrize(
    ("key", "variant", "expected"),
    [
        ("cnn", "cnn", {"unshuffled": 86.60, "shuffled": 91.08}),  # test, never the CV mean
        ("resnet50", "resnet50_sgd", {"unshuffled": 90.76, "shuffled": 89.88}),
        ("supcon", "supcon", {"unshuffled": 97.33, "shuffled": 96.35}),
        ("supcon", "supcon_ce_control", {}),  # the paper ran no such model
        ("resnet50", "resnet50", {}),  # one optimizer the paper did not name
    ],
)
def test_paper_numbers_sit_beside_the_same_model_only(key, variant, expected):
    assert paper.paper_accuracy(key, variant) == expected


def _record(variant, val, test, ci=(0.0, 1.0)):
    y = np.zeros(10, int)
    return {
        "variant": variant,
        "val_accuracy": val,
        "image_size": 32,
        "epochs": 1,
        "optimizer": "adam",
        "weights": "none",
        "train_minutes": 1.0,
        "test": {
            "accuracy": test,
            "macro_f1": test,
            "ece": 0.01,
            "ci95": {"accuracy": list(ci), "macro_f1": list(ci)},
            "per_class": {"basophil": {"recall": 1.0}},
            "confusion_matrix": np.eye(8, dtype=int).tolist(),
        },
        "predictions": {"test_y": y, "test_probs": np.eye(8)[y]},
    }


def test_family_conclusion_describes_the_variant_chosen_on_validation():
    best_val = _record("resnet50_sgd", val=0.90, test=0.80)
    best_test = _record("resnet50_rmsprop", val=0.85, test=0.95)
    for order in ([best_val, best_test], [best_test, best_val]):
        text = report.family_conclusion("resnet50", order)
        assert text.startswith("**resnet50_sgd** (chosen on validation) reaches **80.00%**")
        assert "on test it is 15.00 points below it" in text
        assert "90.76%" in text  # the paper's number for the same model (SGD)
