"""Training-side remedies (issue 18, part 3): the stain layers, the GroupNorm copy, the
params check and the choice on validation, on real sample images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bloodcells import remedies, remedy_report, robust, shift
from bloodcells.preprocess import load_resized


@pytest.fixture(scope="module")
def cells(built, sample_dir) -> np.ndarray:
    """Sixteen real images of the sample at 32 px, every class among them."""
    manifest = built[0]
    rows = manifest.groupby("label").head(2)
    return np.stack([load_resized(sample_dir / p, 32) for p in rows["path"]])


def lab(x):
    from keras import ops

    from bloodcells.stain import rgb_to_lab

    return ops.convert_to_numpy(rgb_to_lab(x))


def test_lab_matches_the_cie_reference_values_and_round_trips(cells):
    from keras import ops

    from bloodcells.stain import lab_to_rgb

    # sRGB white, red and blue in CIE L*a*b* (D65): the published reference values
    probe = np.array([[[[255, 255, 255], [255, 0, 0], [0, 0, 255]]]], dtype=np.uint8)
    expected = [[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]]
    np.testing.assert_allclose(lab(probe)[0, 0], expected, atol=0.02)
    back = ops.convert_to_numpy(lab_to_rgb(lab(cells)))
    assert np.abs(back - cells).max() < 0.6  # every real pixel comes back


def test_stain_normalisation_maps_each_image_to_the_target_and_undoes_a_restaining(cells):
    from keras import ops

    from bloodcells.stain import StainNormalisation, lab_statistics

    target = lab_statistics(cells)
    layer = StainNormalisation(target)
    out = lab(ops.convert_to_numpy(layer(cells)))
    # each image's L*a*b* means land on the target's (gamut clipping aside)
    np.testing.assert_allclose(
        out.mean(axis=(1, 2)), np.tile(target[:3], (len(cells), 1)), atol=1.5
    )
    restained = shift.apply(cells, "stain (HED)", 3, seed=1)
    before = np.abs(restained.astype(float) - cells).mean()
    after = np.abs(
        ops.convert_to_numpy(layer(restained)) - ops.convert_to_numpy(layer(cells))
    ).mean()
    assert after < 0.5 * before, (before, after)


def test_stain_jitter_is_seeded_changes_training_images_only_and_survives_saving(cells, tmp_path):
    import keras
    from keras import ops

    from bloodcells.models import load_saved
    from bloodcells.stain import RandomStainColour

    def jittered(seed):
        return ops.convert_to_numpy(RandomStainColour(0.2, seed)(cells, training=True))

    np.testing.assert_array_equal(jittered(3), jittered(3))
    assert np.abs(jittered(3) - jittered(4)).mean() > 1.0
    assert np.abs(jittered(3) - cells).mean() > 2.0
    layer = RandomStainColour(0.2, 3)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(cells, training=False)), cells)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(layer(inputs)))
    model.save(tmp_path / "m.keras")
    again = load_saved(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(cells, verbose=0), model.predict(cells, verbose=0))


def test_groupnorm_copy_replaces_every_batchnorm_and_is_batch_independent(cells):
    import keras

    from bloodcells.models import build_model, nested_layers

    base = build_model(
        "cnn", 32, 8, dropout=0.0, conv_widths=[16, 32, 64]
    )  # no dropout: deterministic
    copy = robust.groupnorm_copy(base, 8)

    def layers(model, kind):
        return [layer for layer in nested_layers(model) if isinstance(layer, kind)]

    bn = layers(base, keras.layers.BatchNormalization)
    assert len(bn) == 6 and not layers(copy, keras.layers.BatchNormalization)
    assert len(layers(copy, keras.layers.GroupNormalization)) == len(bn)
    # in training mode an image's output does not depend on the batch it comes in
    alone = copy(cells[:1], training=True)
    together = copy(cells, training=True)[:1]
    np.testing.assert_allclose(np.asarray(alone), np.asarray(together), atol=1e-5)
    assert not np.allclose(
        np.asarray(base(cells[:1], training=True)), np.asarray(base(cells, training=True)[:1])
    )


def test_the_combined_remedy_normalises_then_jitters_in_training_only(cells):
    """``normalisation_augmentation``: Reinhard normalisation, then the stain jitter; in
    inference its front gives exactly the normalisation alone, in training more."""
    import keras
    from keras import ops

    from bloodcells.config import load_params
    from bloodcells.experiment import study_config
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml", profile="smoke")
    section = params["robust_training"]
    cfg = study_config(params, "robust_training")
    both = robust.remedy_model("normalisation_augmentation", cfg, section, cells)
    alone = robust.remedy_model("stain_normalisation", cfg, section, cells)
    kinds = [type(layer).__name__ for layer in both.layers[1:-1]]
    assert kinds == ["StainNormalisation", "RandomStainColour"]

    def front(model, training):
        x = ops.convert_to_tensor(cells.astype("float32"))
        for layer in model.layers[1:-1]:
            x = layer(x, training=training)  # Keras drops it for a call without one
        return ops.convert_to_numpy(x)

    np.testing.assert_allclose(front(both, False), front(alone, False), atol=1e-4)
    assert np.abs(front(both, True) - front(alone, False)).mean() > 2.0
    assert isinstance(both.layers[-1], keras.Model)  # the recipe's model behind the front


GOOD = {
    "family": "cnn",
    "image_size": 64,
    "epochs": 4,
    "conv_widths": [16, 32, 64],
    "remedies": ["none", "groupnorm"],
    "seeds": [42],
    "augmentation_strength": 0.2,
    "groupnorm_groups": 8,
    "groupnorm_learning_rate": 0.0001,
    "val_images": 0,
    "test_images": 100,
    "severities": [1, 3],
    "shift_seed": 0,
    "choose_within": 0.003,
}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"family": "resnet"}, "family"),
        ({"remedies": ["groupnorm"]}, "remedies"),  # no baseline
        ({"remedies": ["none", "dropout"]}, "remedies"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"conv_widths": [16] * 7}, "conv_widths"),  # pools 64 px below one pixel
        ({"severities": [5]}, "severities"),
        ({"augmentation_strength": 1.5}, "augmentation_strength"),
        ({"groupnorm_learning_rate": 0}, "groupnorm_learning_rate"),
        ({"val_images": -1}, "val_images"),
    ],
)
def test_params_errors_name_the_key(change, key):
    assert remedies.check_params(GOOD, {"cnn": {}}) == GOOD
    with pytest.raises(ValueError, match=f"'robust_training.{key}'"):
        remedies.check_params(GOOD | change, {"cnn": {}})
    missing = {k: v for k, v in GOOD.items() if k != key}
    with pytest.raises(ValueError, match=f"'robust_training.{key}'"):
        remedies.check_params(missing, {"cnn": {}})


def table(rows: dict[str, tuple[float, float, float, float]], sd=None) -> pd.DataFrame:
    cols = [
        "val accuracy",
        "test accuracy",
        "val accuracy under shift",
        "test accuracy under shift",
    ]
    out = pd.DataFrame.from_dict(rows, orient="index", columns=cols)
    out["seeds"] = 1 if sd is None else 3
    out["sd over seeds (test accuracy)"] = sd
    return out


def test_the_choice_is_the_most_robust_within_the_tolerance_on_validation():
    t = table(
        {
            "none": (0.950, 0.95, 0.70, 0.70),
            "groupnorm": (0.948, 0.90, 0.80, 0.99),  # within 0.3 points: most robust on val
            "stain_augmentation": (0.940, 0.96, 0.90, 0.60),  # more robust, 1 point worse
        }
    )
    assert remedy_report.choose(t, 0.003) == "groupnorm"
    assert remedy_report.choose(t, 0.02) == "stain_augmentation"
    assert remedy_report.choose(t, 0.0) == "none"


def planted(seed_accuracies: dict[tuple[str, int], float], n: int = 400) -> tuple[list, dict]:
    """Records and predictions of remedy runs whose test accuracy is planted: each run gets
    the first ``accuracy * n`` of ``n`` test images right (so two runs share their errors)."""
    y = np.arange(n) % 8
    records, preds = [], {}
    for (remedy, seed), acc in seed_accuracies.items():
        pred = y.copy()
        wrong = np.arange(n) >= round(acc * n)
        pred[wrong] = (y[wrong] + 1) % 8
        probs = np.eye(8)[pred]
        variant = f"{remedy}_s{seed}"
        records.append({"remedy": remedy, "seed": seed, "variant": variant})
        preds[variant] = {"test_probs": probs, "test_y": y, "val_probs": probs, "val_y": y}
    return records, preds


def differences_text(accs: dict, shift_gain: float = 0.15) -> str:
    records, preds = planted(accs)
    diffs = remedy_report.in_domain_differences(records, preds, n_bootstrap=2000)
    base = np.mean([a for (m, _), a in accs.items() if m == "none"])
    mine = np.mean([a for (m, _), a in accs.items() if m == "groupnorm"])
    seeds = len({s for _, s in accs})
    t = table({"none": (0.95, base, 0.7, 0.70), "groupnorm": (0.94, mine, 0.8, 0.70 + shift_gain)})
    t["seeds"] = seeds
    return remedy_report.conclusion(
        t, "groupnorm", diffs, remedy_report.baseline_ci(records, preds, 500)
    )


def test_in_domain_differences_pair_each_seed_with_the_baseline():
    records, preds = planted(
        {("none", 1): 0.95, ("none", 2): 0.93, ("groupnorm", 1): 0.90, ("groupnorm", 2): 0.90}
    )
    d = remedy_report.in_domain_differences(records, preds, n_bootstrap=2000).loc["groupnorm"]
    assert d["difference"] == pytest.approx(-0.04)  # mean of -0.05 and -0.03
    assert d["sd over seeds"] == pytest.approx(np.std([-0.05, -0.03], ddof=1))
    assert d["ci low"] < d["difference"] < d["ci high"] < 0  # errors nested: a tight CI
    records, preds = planted({("none", 1): 0.95, ("groupnorm", 2): 0.90})
    with pytest.raises(ValueError, match="shares no seed"):
        remedy_report.in_domain_differences(records, preds)


def test_the_conclusion_calls_a_difference_real_only_beyond_the_ci_and_the_seed_spread():
    # one seed, 5 points worse: outside the paired CI, but the seed spread is unmeasured
    text = differences_text({("none", 1): 0.95, ("groupnorm", 1): 0.90})
    assert "**groupnorm**: 85.00% under shift (+15.00 points" in text
    assert "costs 5.00 points in-domain; its paired 95% CI" in text
    assert "with one seed the seed-to-seed spread is not measured, so it is not called real" in (
        text
    )
    assert "seed-to-seed spread is not measured here" in text
    # three seeds, 5 points worse at each: outside the CI and beyond the spread
    accs = {("none", s): 0.95 for s in (1, 2, 3)} | {
        ("groupnorm", s): a for s, a in ((1, 0.90), (2, 0.89), (3, 0.91))
    }
    text = differences_text(accs)
    assert "costs 5.00 points in-domain, a real difference" in text
    assert "not measured" not in text
    # three seeds whose differences swing more than the mean difference: not real
    accs = {("none", s): 0.95 for s in (1, 2, 3)} | {
        ("groupnorm", s): a for s, a in ((1, 0.90), (2, 0.975), (3, 0.935))
    }
    assert "is within the seed spread" in differences_text(accs)
    # half a point on 400 images: inside the paired CI
    text = differences_text({("none", 1): 0.95, ("groupnorm", 1): 0.945})
    assert "changes in-domain accuracy by -0.50 points, within test sampling" in text


def test_pruning_keeps_the_planned_runs_and_the_scores(tmp_path):
    """``models/robust`` persists between runs of its stage: a run dropped from the section
    is removed there and in ``dvclive/robust``, the planned runs and ``shift.json`` stay."""
    for top in ("models", "dvclive"):
        for run in ("none_s42", "groupnorm_s42", "groupnorm_s7"):
            (tmp_path / top / "robust" / run).mkdir(parents=True)
            (tmp_path / top / "robust" / run / "run.json").write_text("{}")
    (tmp_path / "models/robust/shift.json").write_text("{}")
    removed = robust.prune_runs(tmp_path, {"none_s42", "groupnorm_s42"})
    assert removed == ["groupnorm_s7"]
    for top in ("models", "dvclive"):
        left = sorted(p.name for p in (tmp_path / top / "robust").iterdir())
        assert [p for p in left if p != "shift.json"] == ["groupnorm_s42", "none_s42"]
    assert (tmp_path / "models/robust/shift.json").is_file()
    assert robust.prune_runs(tmp_path / "elsewhere", {"none_s42"}) == []  # nothing trained yet


def test_a_remedy_model_keeps_the_recipes_cnn_settings(cells):
    """The remedies train the recipe's CNN: its BatchNorm settings reach every remedy's
    model (none silently rebuilt with the defaults)."""
    import dataclasses

    import keras

    from bloodcells.config import load_params
    from bloodcells.experiment import study_config
    from bloodcells.models import find_layer
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml", profile="smoke")
    section = params["robust_training"]
    cfg = dataclasses.replace(study_config(params, "robust_training"), bn_scale=False)
    for remedy in ("none", "stain_normalisation"):
        backbone = find_layer(robust.remedy_model(remedy, cfg, section, cells), "cnn_backbone")
        norms = [b for b in backbone.layers if isinstance(b, keras.layers.BatchNormalization)]
        assert norms and all(b.gamma is None for b in norms), remedy
