"""The champion: dihedral TTA and a validation-chosen ensemble, scored once on test."""

from __future__ import annotations

import numpy as np

from bloodcells import champion


def test_dihedral_gives_eight_distinct_views_of_an_asymmetric_image():
    x = np.arange(2 * 5 * 5 * 3, dtype=np.uint8).reshape(2, 5, 5, 3)
    views = [champion.dihedral(x, v) for v in range(8)]
    assert np.array_equal(views[0], x)
    assert len({v.tobytes() for v in views}) == 8
    for v in views:  # each view only moves pixels
        assert v.shape == x.shape and np.array_equal(np.sort(v, axis=None), np.sort(x, axis=None))


def onehot(y, n=3, p=0.9):
    out = np.full((len(y), n), (1 - p) / (n - 1))
    out[np.arange(len(y)), y] = p
    return out


def test_greedy_ensemble_adds_a_member_only_when_validation_loss_falls():
    y = np.array([0, 1, 2, 0, 1, 2])
    good = onehot(y)
    wrong_half = good.copy()
    wrong_half[:3] = onehot((y[:3] + 1) % 3)
    assert champion.greedy_ensemble({"good": good, "bad": wrong_half}, y) == ["good"]
    # two models wrong on different halves: together better than either alone
    other = good.copy()
    other[3:] = onehot((y[3:] + 1) % 3)
    assert sorted(champion.greedy_ensemble({"a": wrong_half, "b": other}, y)) == [
        "a",
        "b",
    ]


class OrientationModel:
    """Predicts class 0 for an upright gradient and class 1 for a turned one."""

    def __call__(self, batch, training=False):
        x = np.asarray(batch, dtype=float)
        upright = (x[:, -1].mean(axis=(1, 2)) > x[:, 0].mean(axis=(1, 2))).astype(float)
        return np.stack([upright, 1 - upright, np.zeros_like(upright)], axis=1)


def test_champion_scores_tta_and_ensemble_on_test_after_choosing_on_val():
    """Validation and test are planted to disagree: every choice must follow validation."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 8, dtype=np.uint8)[None, :, None, None] * np.ones(
        (1, 1, 8, 3), np.uint8
    )
    x = np.repeat(ramp, 40, axis=0) + rng.integers(0, 3, (40, 8, 8, 3), dtype=np.uint8)
    y = np.zeros(40, dtype=int)
    right = np.tile([[0.6, 0.4, 0.0]], (40, 1))  # saved predictions: class 0, correct
    wrong = np.tile([[0.4, 0.6, 0.0]], (40, 1))  # class 1, wrong
    runs = [
        {
            "variant": name,
            "key": name,
            "weights": weights,
            "image_size": 8,
            "val_accuracy": val_acc,
            "test": {"accuracy": test_acc},  # planted the other way round: never consulted
            "inference_images_per_second": 100.0,
            "predictions": {"val_probs": right, "val_y": y, "test_probs": wrong, "test_y": y},
        }
        for name, weights, val_acc, test_acc in (
            ("m1", "none", 0.8, 0.99),
            ("m2", "none", 0.9, 0.50),
            ("m3", "none", 0.7, 1.00),
            ("pre", "imagenet", 1.0, 1.00),
        )
    ]
    out = champion.build_champion(
        runs,
        {8: {"val": x, "test": x}},
        lambda run: OrientationModel(),
        candidates=2,
        n_bootstrap=50,
    )
    assert out["candidates"] == ["m2", "m1"]  # from scratch only, best validation first
    single, tta = out["rows"][:2]
    assert single["name"] == "m2"
    assert single["val_accuracy"] == 1.0 and single["test_accuracy"] == 0.0
    # TTA is the mean of the model's outputs over the 8 dihedral views
    views = [OrientationModel()(champion.dihedral(x, v)) for v in range(8)]
    assert np.allclose(tta["test_probs"], np.mean(views, axis=0))
    assert 0 < tta["test_accuracy"] < 1  # turned views vote for class 1
    assert tta["val_accuracy"] < 1
    # the single model wins on validation and loses on test: validation decides
    assert out["chosen"] == "m2"
    # m1 and m2 are the same model: adding m1 cannot lower the validation log-loss, so the
    # greedy ensemble keeps m2 alone and no "ensemble" row repeats the TTA row
    assert len(out["rows"]) == 2 and tta["members"] == ["m2"]
    summary = champion.champion_summary(out)
    assert "test_probs" not in summary and summary["candidates"] == ["m2", "m1"]
    assert summary["test_accuracy"] == 0.0
    table = champion.champion_table(out)
    assert list(table["chosen on validation"]) == ["yes", ""]
    # max_gap drops candidates too far behind the best on validation (m1: 0.8 vs 0.9)
    near = champion.build_champion(
        runs, {8: {"val": x, "test": x}}, lambda run: OrientationModel(), 3, 8, 50, max_gap=0.15
    )
    assert near["candidates"] == ["m2", "m1"]
    only = champion.build_champion(
        runs, {8: {"val": x, "test": x}}, lambda run: OrientationModel(), 3, 8, 50, max_gap=0.05
    )
    assert only["candidates"] == ["m2"]
