"""The SupCon loss against a NumPy reference, its invariances, and its gradients; the
recipe's optimizers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from bloodcells.supcon import SupConLoss, supcon_reference

VIEW_PAIRS_ONLY = np.array([0, 1, 2, 3, 0, 1, 2, 3])  # each label only on an image's two views
REPEATED = np.array([0, 1, 0, 2, 1, 0, 0, 1, 0, 2, 1, 0])  # classes repeat within the batch


def loss(labels, z, t):
    return float(SupConLoss(t)(labels, z.astype("float32")))


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("labels", [VIEW_PAIRS_ONLY, REPEATED], ids=["pairs", "repeated"])
def test_equals_numpy_reference(temperature, labels):
    rng = np.random.default_rng(int(temperature * 100) + len(labels))
    for _ in range(3):
        z = rng.normal(size=(len(labels), 16))
        assert loss(labels, z, temperature) == pytest.approx(
            supcon_reference(labels, z, temperature), rel=1e-4
        )


def test_invariant_to_batch_permutation_and_embedding_scale():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(len(REPEATED), 8))
    base = loss(REPEATED, z, 0.1)
    perm = rng.permutation(len(REPEATED))
    assert loss(REPEATED[perm], z[perm], 0.1) == pytest.approx(base, rel=1e-5)
    scales = rng.uniform(0.1, 10, (len(REPEATED), 1))
    assert loss(REPEATED, z * scales, 0.1) == pytest.approx(base, rel=1e-5)


def test_anchors_without_positives_are_left_out():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(5, 4))
    labels = np.array([0, 0, 1, 2, 3])  # only the first two anchors have a positive
    assert loss(labels, z, 0.1) == pytest.approx(supcon_reference(labels, z, 0.1), rel=1e-4)
    assert loss(np.arange(4), z[:4], 0.1) == 0.0  # no positives at all: zero, not NaN


def test_lower_when_positives_align():
    labels = VIEW_PAIRS_ONLY
    aligned = np.eye(4)[labels] + 0.01
    rng = np.random.default_rng(3)
    assert loss(labels, aligned, 0.1) < loss(labels, rng.normal(size=aligned.shape), 0.1)


@pytest.mark.parametrize("temperature", [0.05, 0.1])
def test_gradients_are_finite(temperature):
    rng = np.random.default_rng(4)
    z = tf.Variable(rng.normal(size=(len(REPEATED), 8)).astype("float32") * 50)
    with tf.GradientTape() as tape:
        value = SupConLoss(temperature)(REPEATED, z)
    grad = tape.gradient(value, z).numpy()
    assert np.isfinite(value.numpy()) and np.isfinite(grad).all() and np.abs(grad).sum() > 0


def test_every_optimizer_of_the_recipe_gets_the_warmup_and_the_average(
    built, sample_dir, tmp_path, monkeypatch
):
    """SupCon's three optimizers (pre-training, probe, cross-entropy control) all take the
    entry's warm-up and EMA settings: none is silently left without them."""
    import copy

    from bloodcells import train
    from bloodcells.config import load_params
    from bloodcells.supcon import CONTROL, KEY, train_supcon
    from tests.conftest import ROOT, mini_project

    root = mini_project(tmp_path, built[0], sample_dir)
    params = copy.deepcopy(load_params(ROOT / "params.yaml", profile="smoke"))
    params["models"][KEY] |= {"warmup_fraction": 0.2, "ema_momentum": 0.5}
    asked, make = [], train.make_optimizer

    def recorded(name, rate, steps=None, warmup_fraction=0.0, ema_momentum=0.0):
        asked.append((warmup_fraction, ema_momentum))
        return make(name, rate, steps, warmup_fraction, ema_momentum)

    monkeypatch.setattr(train, "make_optimizer", recorded)
    train_supcon(params, root, verbose=0)
    assert len(asked) >= 3 and set(asked) == {(0.2, 0.5)}
    for variant in (KEY, CONTROL):
        record = json.loads((root / "models" / KEY / variant / "run.json").read_text())
        assert record["config"]["ema_momentum"] == 0.5


@pytest.mark.parametrize(
    ("setting", "value"), [("bn_scale", False), ("whitening", 2), ("progressive_from", 16)]
)
def test_the_classifiers_cnn_settings_are_refused_not_ignored(setting, value):
    """SupCon's encoder is the plain CNN: a classifier-only setting on its entry fails
    before any work, naming the key."""
    import copy

    from bloodcells.config import load_params
    from bloodcells.models import ModelConfigError
    from bloodcells.supcon import KEY, train_supcon
    from tests.conftest import ROOT

    params = copy.deepcopy(load_params(ROOT / "params.yaml", profile="smoke"))
    params["models"][KEY] |= {"conv_widths": [8, 16], setting: value}
    with pytest.raises(ModelConfigError, match=rf"'models\.supcon\.{setting}'.*classifier only"):
        train_supcon(params, ROOT / "nowhere", verbose=0)
