"""Every builder builds and takes a training step; bad settings fail naming the key."""

from __future__ import annotations

import urllib.error
import urllib.request

import keras
import numpy as np
import pytest

from bloodcells import models
from bloodcells.models import FAMILIES, ModelConfigError, build_model

# The smallest legal size for each family keeps the test fast on two cores.
SIZES = {name: max(32, fam.min_size + (-fam.min_size) % 8) for name, fam in FAMILIES.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_builds_and_takes_a_training_step(family):
    size = SIZES[family]
    model = build_model(family, size, n_classes=8, dense_units=16)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 8)
    # eagerly: tracing DenseNet-201's train and predict steps costs a minute, one step not
    model.compile("adam", "categorical_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, 4)]
    before = [w.numpy().copy() for w in model.trainable_weights[-2:]]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = [w.numpy() for w in model.trainable_weights[-2:]]
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(("family", "size"), [("inceptionv3", 74), ("xception", 70), ("cnn", 8)])
def test_size_under_the_backbone_minimum_names_the_key(family, size):
    with pytest.raises(ModelConfigError, match=rf"'image_size'.*{family} needs .*least"):
        build_model(family, size)


def test_conv_widths_set_the_cnn_blocks():
    model = build_model("cnn", 96, dense_units=8, conv_widths=(16, 32, 64, 128, 256))
    backbone = model.get_layer("cnn_backbone")
    pools = [layer for layer in backbone.layers if "pool" in layer.name]
    assert len(pools) == 5
    assert backbone.output_shape == (None, 3, 3, 256)
    assert backbone.get_layer("block1_conv1").filters == 16
    default = build_model("cnn", 96, dense_units=8).get_layer("cnn_backbone")
    assert default.output_shape == (None, 6, 6, models.CNN_WIDTHS[-1])


def test_unknown_family_names_the_key():
    with pytest.raises(ModelConfigError, match="Unknown model family 'resnet51'.*Known"):
        build_model("resnet51", 64)


def test_unet_size_must_be_a_multiple_of_8():
    with pytest.raises(ModelConfigError, match="multiple of 8"):
        build_model("unet", 36)


def test_imagenet_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    with pytest.raises(ModelConfigError, match="mobilenet_v2_weights.*Keras's cache folder"):
        build_model("mobilenetv2", 64, weights="imagenet")


def test_weights_must_be_explicit():
    with pytest.raises(ModelConfigError, match="'weights' is 'imagenet1k'"):
        build_model("resnet50", 64, weights="imagenet1k")
    with pytest.raises(ModelConfigError, match="cnn has no ImageNet weights"):
        build_model("cnn", 64, weights="imagenet")


def test_preprocess_layer_round_trips_through_a_saved_model(tmp_path):
    model = build_model("cnn", 32, dense_units=8)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.full((2, 32, 32, 3), 200, dtype=np.uint8)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=1e-5)
    assert isinstance(loaded.get_layer("preprocess"), models.Preprocess)


def test_saved_for_inference_drops_the_optimizer_state(tmp_path):
    model = build_model("cnn", 32, dense_units=8)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    model.fit(x, np.eye(8, dtype="float32"), epochs=1, verbose=0)
    model.save(tmp_path / "full.keras")
    models.save_for_inference(model, tmp_path / "slim.keras")
    loaded = keras.saving.load_model(tmp_path / "slim.keras", safe_mode=True)
    assert not loaded.compiled and loaded.name == model.name
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    # Adam keeps two moments per weight: without them the file is about a third
    full, slim = (tmp_path / "full.keras").stat().st_size, (tmp_path / "slim.keras").stat().st_size
    assert slim < 0.45 * full


def test_hybrid_starts_from_trained_branches(tmp_path):
    saved = {}
    for family in models.HYBRID_BRANCHES:
        model = build_model(family, 80, dense_units=8)
        model.save(tmp_path / f"{family}.keras")
        saved[family] = model.get_layer(models.HYBRID_BRANCHES[family]).get_weights()[0]
    branches = {
        f: models.branch_backbone(tmp_path / f"{f}.keras", f, 80) for f in models.HYBRID_BRANCHES
    }
    hybrid = models.build_hybrid(80, dense_units=16, branches=branches)
    for family, name in models.HYBRID_BRANCHES.items():
        np.testing.assert_array_equal(hybrid.get_layer(name).get_weights()[0], saved[family])
    assert hybrid.get_layer("concat").output.shape[-1] == 2048 + 2048
    frozen = models.freeze_branches(hybrid)
    assert not frozen.get_layer("inception_v3").trainable
    assert frozen.get_layer("head_dense").trainable
    with pytest.raises(ModelConfigError, match="trained at 80 px"):
        models.branch_backbone(tmp_path / "xception.keras", "xception", 96)
    with pytest.raises(FileNotFoundError, match="from_stages"):
        models.branch_backbone(tmp_path / "missing.keras", "xception", 80)


def test_saving_the_same_model_twice_gives_the_same_bytes(tmp_path):
    """No date, zip timestamp or memory address in a saved model (decision 010)."""
    import time

    paths = [tmp_path / "a.keras", tmp_path / "b.keras"]
    for path in paths:
        keras.utils.set_random_seed(3)
        model = models.build_model("unet", 32, 8, "none", 64, 0.5, 0.0, None)
        models.save_for_inference(model, path)
        time.sleep(2.1)  # zip entries carry times in 2-second steps
    assert paths[0].read_bytes() == paths[1].read_bytes()
    loaded = keras.saving.load_model(paths[0], safe_mode=True, compile=False)
    assert loaded.count_params() == model.count_params()


def test_every_from_scratch_batchnorm_gets_the_study_momentum():
    from bloodcells.supcon import build_encoder

    def momenta(model: keras.Model) -> set[float]:  # nested backbones: every sub-model
        bn = keras.layers.BatchNormalization
        return {layer.momentum for layer in models.nested_layers(model) if isinstance(layer, bn)}

    built = {
        "classifier": build_model("mobilenetv2", 32),
        "SupCon encoder": build_encoder("mobilenetv2", 32),
        "hybrid": models.build_hybrid(80, weights="none"),
        "cnn": build_model("cnn", 32, conv_widths=(8, 16)),
    }
    for name, model in built.items():
        assert momenta(model) == {models.BN_MOMENTUM}, name


@pytest.fixture(scope="module")
def sample_images(tmp_path_factory, built, sample_dir) -> np.ndarray:
    from bloodcells import experiment
    from tests.conftest import mini_project

    root = mini_project(tmp_path_factory.mktemp("whiten"), built[0], sample_dir)
    return np.asarray(experiment.load_splits(32, root)["train"][0])


@pytest.mark.parametrize("patch", models.WHITENING_PATCHES)
def test_the_whitening_stem_decorrelates_the_patches_of_real_images(sample_images, patch):
    """On the sample's real cells, every patch through the stem's first half comes out
    with zero mean and covariance diag(v / (v + eps)) over the patch covariance's
    eigenvalues v: decorrelated, and of unit variance wherever the data varies; the second
    half is its negative."""
    from numpy.lib.stride_tricks import sliding_window_view

    eps = 5e-4
    kernel, bias = models.whitening_filters(sample_images, patch, eps=eps)
    dims = patch * patch * 3
    assert kernel.shape == (patch, patch, 3, 2 * dims) and bias.shape == (2 * dims,)
    x = sample_images.astype(np.float64) / 255.0
    p = sliding_window_view(x, (patch, patch), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
    p = p.reshape(-1, dims)
    out = p @ kernel.reshape(dims, 2 * dims).astype(np.float64) + bias
    np.testing.assert_allclose(out[:, dims:], -out[:, :dims], atol=1e-6)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    values = np.sort(np.linalg.eigvalsh(np.cov(p, rowvar=False, bias=True)))[::-1]
    expected = np.diag(values / (values + eps))
    np.testing.assert_allclose(np.cov(out[:, :dims], rowvar=False, bias=True), expected, atol=2e-3)
    assert expected[0, 0] > 0.99  # the strongest directions come out at unit variance


def test_the_whitening_stem_is_a_frozen_first_layer_and_bn_may_drop_its_scale(sample_images):
    """A CNN built with a stem runs it first, frozen; a training step moves the blocks but
    not the stem, and ``bn_scale=False`` leaves every BatchNorm a bias only."""
    opts = models.CnnOptions(bn_momentum=0.6, bn_scale=False, whitening=2)
    model = build_model("cnn", 32, dense_units=8, conv_widths=(8, 16), cnn=opts)
    backbone = model.get_layer("cnn_backbone")
    assert backbone.layers[1].name == models.WHITEN and backbone.output_shape == (None, 8, 8, 16)
    models.fit_whitening(model, sample_images)
    stem = [w.numpy().copy() for w in backbone.get_layer(models.WHITEN).weights]
    block = backbone.get_layer("block1_conv1").kernel.numpy().copy()
    model.compile("adam", "categorical_crossentropy", run_eagerly=True)
    model.train_on_batch(sample_images[:8], np.eye(8, dtype=np.float32)[np.arange(8)])
    for before, after in zip(stem, backbone.get_layer(models.WHITEN).weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    assert not np.allclose(block, backbone.get_layer("block1_conv1").kernel.numpy())
    norms = [b for b in backbone.layers if isinstance(b, keras.layers.BatchNormalization)]
    assert {b.momentum for b in norms} == {0.6}
    assert all(b.gamma is None and b.beta is not None for b in norms)
