"""The shift benchmark: deterministic shifts whose strength grows with severity, scored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bloodcells import shift
from bloodcells.preprocess import load_resized


@pytest.fixture(scope="module")
def images(built, sample_dir):
    """Eight real test-split images of the sample, at 32 and 80 px."""
    manifest = built[0]
    rows = manifest[manifest["split"] == "test"].head(8)
    return {
        size: np.stack([load_resized(sample_dir / p, size) for p in rows["path"]])
        for size in (32, 80)
    }


@pytest.mark.parametrize("name", list(shift.SHIFTS))
def test_shift_is_deterministic_and_grows_with_severity(images, name):
    for x in images.values():
        a = shift.apply(x, name, 2, seed=5)
        assert a.dtype == np.uint8 and a.shape == x.shape
        np.testing.assert_array_equal(a, shift.apply(x, name, 2, seed=5))
        change = [
            np.abs(shift.apply(x, name, s, seed=5).astype(float) - x).mean()
            for s in shift.SEVERITIES
        ]
        assert 0 < change[0] < change[-1], (name, change)


def test_unknown_shift_and_severity_are_named():
    x = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(KeyError, match="'fog'.*stain"):
        shift.apply(x, "fog", 1)
    with pytest.raises(ValueError, match="Severity must be one of"):
        shift.apply(x, "noise", 4)


def test_stratified_subset_keeps_class_proportions():
    y = np.repeat(np.arange(4), [400, 200, 100, 100])
    keep = shift.stratified_subset(y, 80, seed=0)
    assert len(keep) == 80 and np.all(np.diff(keep) > 0)
    assert np.bincount(y[keep]).tolist() == [40, 20, 10, 10]
    assert len(shift.stratified_subset(y, 0, seed=0)) == len(y)


def test_benchmark_scores_every_model_shift_and_severity(images):
    """A planted model that knows the clean images only: right on every clean image, and
    right under a shift exactly when the shift left the image unchanged."""
    x = images[32]
    y = np.arange(len(x)) % 8
    known = {im.tobytes(): label for im, label in zip(x, y, strict=True)}

    def predict(name, batch):  # the cases come stacked, each in the order of y
        truth = y[np.arange(len(batch)) % len(y)]
        labels = [known.get(im.tobytes(), (t + 1) % 8) for im, t in zip(batch, truth, strict=True)]
        return np.eye(8)[labels]

    table = shift.benchmark(predict, {"planted": 32}, {32: x}, y, ["noise", "jpeg"], (1, 3), 0)
    assert len(table) == 1 + 2 * 2
    clean = table[table["shift"] == "none"].iloc[0]
    assert clean["accuracy"] == 1.0 and clean["balanced_accuracy"] == 1.0
    for _, row in table[table["shift"] != "none"].iterrows():
        shifted = shift.apply(x, row["shift"], row["severity"], 0)
        unchanged = np.all(shifted == x, axis=(1, 2, 3)).mean()
        assert row["accuracy"] == pytest.approx(unchanged)
    s = shift.summary(table)
    under = table[table["shift"] != "none"]["accuracy"].mean()
    assert s.loc["planted", "mean accuracy under shift"] == pytest.approx(under)
    assert s.loc["planted", "drop"] == pytest.approx(1.0 - under)
    text = shift.conclusion(s, "planted", len(y))
    assert f"{100 * under:.2f}% under shift" in text


def test_params_errors_name_the_key():
    good = {
        "test_images": 0,
        "severities": [1, 2],
        "external": [],
        "seed": 0,
        "export_within": 0.003,
    }
    from bloodcells.adapt import DEFAULTS

    # the adaptation settings come back whole: the defaults, under what the section sets
    assert shift.check_params(good) == good | {"adapt": DEFAULTS}
    assert shift.check_params(good | {"adapt": {"per_class": 5}})["adapt"] == DEFAULTS | {
        "per_class": 5
    }
    for change, key in (
        ({"test_images": -1}, "test_images"),
        ({"severities": [4]}, "severities"),
        ({"external": "folder"}, "external"),
        ({"export_within": 1.5}, "export_within"),
        ({"adapt": {"epochs": 0}}, "adapt.epochs"),
        ({"adapt": {"views": 9}}, "adapt.views"),
        ({"adapt": {"views": 0}}, "adapt.views"),
        ({"adapt": {"fine_tune_epochs": -1}}, "adapt.fine_tune_epochs"),
        ({"adapt": {"fine_tune_learning_rate": 0}}, "adapt.fine_tune_learning_rate"),
    ):
        with pytest.raises(ValueError, match=f"'generalisation.{key}'"):
            shift.check_params(good | change)


def test_shift_heatmap_has_a_cell_per_model_and_case():
    from bloodcells import plots

    table = pd.DataFrame(
        [
            {"model": m, "shift": s, "severity": v, "accuracy": 0.5, "balanced_accuracy": 0.5}
            for m in ("a", "b")
            for s, v in (("none", 0), ("noise", 1), ("noise", 2))
        ]
    )
    fig = plots.shift_heatmap(table)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["clean", "noise 1", "noise 2"]


def test_flag_table_counts_what_the_detector_flags_per_shift(images, built, sample_dir):
    """A detector fitted on the sample's training colours meets a strong stain shift: it
    flags more of those images than of the clean ones, and the table's shares and
    accuracies are the detector's own flags, case by case."""
    from bloodcells.ood import fit_detector

    manifest = built[0]
    train = np.stack(
        [
            load_resized(sample_dir / p, 32)
            for p in manifest.loc[manifest["split"] == "train", "path"]
        ]
    )
    x = images[32]
    y = np.arange(len(x)) % 8
    sure = np.eye(8)[y] * 0.9 + 0.1 / 8  # confident and right: only colour can flag

    def predict(batch):
        return sure[np.arange(len(batch)) % len(y)]

    detector = fit_detector(train, sure, y, x, false_flag_rate=0.1)
    table = shift.flag_table(detector, predict, x, y, ["stain (HED)", "saturation"], (3,), 0)
    assert list(table["shift"]) == ["none", "stain (HED)", "saturation"]
    for _, row in table.iterrows():
        images_ = x if row["shift"] == "none" else shift.apply(x, row["shift"], 3, 0)
        flagged = detector.flags(sure, images_)["flagged"]
        assert row["flagged"] == pytest.approx(flagged.mean())
    clean = table.iloc[0]["flagged"]
    assert table.iloc[1:]["flagged"].max() > clean
