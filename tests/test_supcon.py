"""The SupCon loss against a NumPy reference, its invariances, and its gradients."""

from __future__ import annotations

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
