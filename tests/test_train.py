"""One training path: config errors name keys, SMOTE is leak-free, runs resume, metrics files."""

from __future__ import annotations

import dataclasses
import json
import time

import keras
import numpy as np
import pytest

from bloodcells import experiment, models, preprocess, train
from bloodcells.config import load_params
from bloodcells.models import ModelConfigError
from tests.conftest import ROOT, mini_project


@pytest.fixture(scope="module")
def smoke_params():
    return load_params(ROOT / "params.yaml", profile="smoke")


@pytest.fixture(scope="module")
def project(tmp_path_factory, built, sample_dir):
    """A minimal project root with the sample's manifest and 32 px arrays."""
    return mini_project(tmp_path_factory.mktemp("proj"), built[0], sample_dir)


@pytest.fixture(scope="module")
def arrays(project):
    return experiment.load_splits(32, project)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizer": "adamw"}, r"'models\.cnn\.optimizers' has 'adamw'"),
        ({"epochs": 0}, r"'models\.cnn\.epochs' must be a positive integer"),
        ({"image_size": 12}, r"'models\.cnn\.image_size' is 12"),
        ({"balance": "undersample"}, r"'models\.cnn\.balance'"),
        ({"conv_widths": [16, 0]}, r"'models\.cnn\.conv_widths' must be a non-empty list"),
        ({"conv_widths": [8] * 6}, r"'models\.cnn\.conv_widths' has 6 blocks.*at least 64"),
        ({"label_smoothing": 1.0}, r"'models\.cnn\.label_smoothing' \(or 'train\.label_smo"),
        ({"ema_momentum": 1.0}, r"'models\.cnn\.ema_momentum' \(or 'train\.ema_momentum'\)"),
        ({"warmup_fraction": -0.1}, r"'models\.cnn\.warmup_fraction'.*in \[0, 1\); got -0\.1"),
        ({"ema_momentum": "high"}, r"'models\.cnn\.ema_momentum'.*got 'high'"),
        ({"dihedral_views": "cyclic"}, r"'models\.cnn\.dihedral_views'.*'cyclic'; allowed: rand"),
        ({"graph_optimizer": "no"}, r"'train\.graph_optimizer' \(or 'models\.cnn\.graph_o"),
        ({"run_eagerly": 1}, r"'train\.run_eagerly' \(or 'models\.cnn\.run_eagerly'\)"),
        ({"bn_momentum": 1.0}, r"'models\.cnn\.bn_momentum'.*in \(0, 1\); got 1\.0"),
        ({"bn_scale": "no"}, r"'train\.bn_scale' \(or 'models\.cnn\.bn_scale'\)"),
        ({"whitening": 4}, r"'models\.cnn\.whitening'.*is 4; allowed: 0 \(no stem\) or .*2 or 3"),
        ({"whitening": True}, r"'models\.cnn\.whitening'.*is True"),
        ({"progressive_from": 32}, r"'models\.cnn\.progressive_from'.*32; use 0 .*below.*, 32"),
        ({"progressive_from": 8}, r"'models\.cnn\.progressive_from'.*from 32 px .*5 times"),
        ({"progressive_from": "16"}, r"'models\.cnn\.progressive_from'.*is '16'"),
    ],
)
def test_bad_settings_name_the_key(smoke_params, change, message):
    opt = change.pop("optimizer", None)
    with pytest.raises(ModelConfigError, match=message):
        train.family_config(smoke_params, "cnn", opt, **change)


def test_only_the_hybrid_with_a_frozen_phase_may_skip_its_joint_phase(smoke_params):
    """``models.hybrid.epochs: 0`` trains the head on the frozen branches only (the paper's
    second hybrid run); a hybrid without frozen epochs, or any other family, still needs
    an epoch."""
    assert train.family_config(smoke_params, "hybrid", epochs=0).epochs == 0
    without = smoke_params | {
        "models": smoke_params["models"]
        | {"hybrid": smoke_params["models"]["hybrid"] | {"frozen_epochs": 0}}
    }
    with pytest.raises(ModelConfigError, match=r"'models\.hybrid\.epochs'.*may be 0 when"):
        train.family_config(without, "hybrid", epochs=0)
    with pytest.raises(ModelConfigError, match=r"'models\.cnn\.epochs' must be a positive"):
        train.family_config(smoke_params | {"models": smoke_params["models"]}, "cnn", epochs=0)


@pytest.mark.parametrize("on", [False, True])
def test_graph_optimizer_follows_the_config(smoke_params, on):
    import tensorflow as tf

    train.configure_tensorflow(train.family_config(smoke_params, "cnn", graph_optimizer=on))
    assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"] is not on


@pytest.mark.parametrize("eager", [False, True])
def test_run_eagerly_follows_the_config(smoke_params, eager):
    import tensorflow as tf

    modes = []

    class Probe(keras.layers.Layer):
        def call(self, x):
            modes.append(tf.executing_eagerly())
            return x

    inputs = keras.Input((32, 32, 3))
    hidden = Probe()(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(8, activation="softmax")(hidden))
    cfg = train.family_config(smoke_params, "cnn", run_eagerly=eager)
    model = train.compiled_classifier(cfg, total_steps=10, model=model)
    assert model.run_eagerly is eager
    modes.clear()
    x = np.zeros((4, 32, 32, 3), dtype=np.float32)
    model.fit(x, np.eye(8, dtype=np.float32)[:4], batch_size=2, epochs=1, verbose=0)
    # Eager: the layer runs once per step; otherwise it is traced into a graph.
    assert modes and all(mode is eager for mode in modes)


def test_conv_widths_belong_to_the_cnn_only(smoke_params):
    with pytest.raises(ModelConfigError, match=r"'models\.vgg16\.conv_widths' applies to the cnn"):
        train.family_config(smoke_params, "vgg16", conv_widths=[16, 32])


@pytest.mark.parametrize(
    ("setting", "value"),
    [("bn_momentum", 0.6), ("bn_scale", False), ("whitening", 2), ("progressive_from", 16)],
)
def test_cnn_options_belong_to_the_cnn_only(smoke_params, setting, value):
    with pytest.raises(ModelConfigError, match=rf"'models\.vgg16\.{setting}' applies to the cnn"):
        train.family_config(smoke_params, "vgg16", **{setting: value})


def test_a_whitening_stem_is_fitted_on_the_training_images_and_stays_frozen(
    smoke_params, arrays, tmp_path
):
    """``whitening`` builds the stem, ``train_model`` sets it from the images it trains on
    (not the validation ones), training leaves it as set, ``bn_scale: false`` leaves the
    BatchNorm layers a bias only, and the saved model carries the stem."""
    from bloodcells.models import WHITEN, find_layer, load_saved, save_for_inference

    (x_tr, y_tr), (x_val, y_val) = arrays["train"], arrays["val"]
    cfg = train.family_config(smoke_params, "cnn", epochs=1, whitening=2, bn_scale=False)
    result = train.train_model(
        cfg, x_tr, y_tr, x_val, y_val, tmp_path / "w", tmp_path / "l", verbose=0
    )
    kernel, bias = models.whitening_filters(x_tr, 2)
    stem = find_layer(result.model, WHITEN)
    assert stem.kernel.shape == (2, 2, 3, 24) and not stem.trainable
    np.testing.assert_allclose(stem.kernel.numpy(), kernel, rtol=1e-6)
    np.testing.assert_allclose(stem.bias.numpy(), bias, rtol=1e-6)
    other, _ = models.whitening_filters(x_val, 2)
    assert not np.allclose(other, kernel, atol=1e-3)  # the data matters: the fit is not generic
    norms = [b for b in result.model.get_layer("cnn_backbone").layers
             if isinstance(b, keras.layers.BatchNormalization)]  # fmt: skip
    assert norms and all(b.gamma is None and b.beta is not None for b in norms)  # bias only
    save_for_inference(result.model, tmp_path / "m.keras")
    loaded = find_layer(load_saved(tmp_path / "m.keras"), WHITEN)
    np.testing.assert_array_equal(loaded.kernel.numpy(), stem.kernel.numpy())


def test_a_stem_needs_a_model_built_with_it(smoke_params, arrays):
    model = models.build_model("cnn", 32, conv_widths=[8, 16])
    with pytest.raises(ModelConfigError, match="no 'whiten' layer: build it with 'whitening'"):
        models.fit_whitening(model, arrays["train"][0])


def test_unknown_family_names_the_key(smoke_params):
    with pytest.raises(ModelConfigError, match=r"'models\.resnet51'"):
        train.family_config(smoke_params, "resnet51")


def test_family_values_fall_back_to_train_defaults(smoke_params):
    cfg = train.family_config(smoke_params, "resnet50", "sgd")
    assert cfg.learning_rate == smoke_params["train"]["learning_rates"]["sgd"]
    assert cfg.batch_size == smoke_params["train"]["batch_size"]
    assert train.family_config(smoke_params, "vgg16").learning_rate == 1e-4


def test_smote_sees_only_training_images(smoke_params, arrays, project, monkeypatch):
    from imblearn.over_sampling import SMOTE

    seen = {}
    original = SMOTE.fit_resample

    def spy(self, X, y):
        seen["X"] = np.array(X)
        return original(self, X, y)

    monkeypatch.setattr(SMOTE, "fit_resample", spy)
    (x_tr, y_tr), (x_val, y_val), (x_te, _) = arrays["train"], arrays["val"], arrays["test"]
    cfg = train.family_config(smoke_params, "cnn", epochs=1, balance="smote", deterministic=False)
    result = train.train_model(
        cfg, x_tr, y_tr, x_val, y_val, project / "w", project / "live", verbose=0
    )
    flat = {row.tobytes() for row in np.asarray(x_tr).reshape(len(x_tr), -1)}
    assert {row.tobytes() for row in seen["X"]} == flat  # exactly the training images
    others = {r.tobytes() for r in np.concatenate([x_val, x_te]).reshape(-1, seen["X"].shape[1])}
    assert not flat & others
    counts = np.bincount(y_tr)
    assert result.train_size == counts.max() * len(counts)  # oversampled to balance


@pytest.mark.parametrize("views", ["random", "alternating"])
def test_training_takes_the_configured_dihedral_views(
    smoke_params, arrays, project, monkeypatch, views
):
    """The training batches are the input pipeline's for ``dihedral_views``; validation's
    are never augmented."""
    asked = []

    def spy(*args, **kwargs):
        asked.append((args[3], args[4] if len(args) > 4 else False, kwargs.get("views")))
        return make_dataset(*args, **kwargs)

    make_dataset = train.make_dataset
    monkeypatch.setattr(train, "make_dataset", spy)
    (x_tr, y_tr), (x_val, y_val) = arrays["train"], arrays["val"]
    cfg = train.family_config(smoke_params, "cnn", epochs=1, dihedral_views=views)
    train.train_model(cfg, x_tr, y_tr, x_val, y_val, project / views, project / "l", verbose=0)
    assert asked == [(True, True, views), (False, False, None)]


@pytest.mark.parametrize("eager", [True, False])
def test_progressive_resizing_trains_small_then_full_in_one_model(
    smoke_params, arrays, project, monkeypatch, eager
):
    """``progressive_from`` hands the pipeline one size per epoch, smallest first and the
    model's own size last; the one model trains on both (eagerly, and traced into a graph),
    and is validated and returned at its own size."""
    import tensorflow as tf

    seen, asked = [], []

    def note(images):
        seen.append(int(images.shape[1]))
        return images

    def record(xb, yb):  # each training batch's height, as the model receives it
        out = tf.py_function(note, [xb], tf.uint8)
        return tf.ensure_shape(out, [None, None, None, 3]), yb

    def spy(*args, **kwargs):
        asked.append(kwargs.get("sizes"))
        ds = make_dataset(*args, **kwargs)
        return ds.map(record) if args[3] else ds  # args[3]: shuffle, i.e. training

    make_dataset = train.make_dataset
    monkeypatch.setattr(train, "make_dataset", spy)
    (x_tr, y_tr), (x_val, y_val) = arrays["train"], arrays["val"]
    cfg = train.family_config(
        smoke_params, "cnn", epochs=2, conv_widths=[8, 16], progressive_from=16, run_eagerly=eager
    )
    out = project / f"progressive-{eager}"
    result = train.train_model(cfg, x_tr, y_tr, x_val, y_val, out / "w", out / "l", verbose=0)
    assert asked == [[16, 32], None]  # validation at the model's own size
    assert sorted(set(seen)) == [16, 32] and seen == sorted(seen)
    assert result.model.input_shape == (None, 32, 32, 3)
    assert list(result.history.index) == [0, 1]


def test_train_step_is_traced_once(smoke_params, arrays, tmp_path, monkeypatch):
    # Optimizer and metric variables exist before fit, so TensorFlow traces the train step
    # once (each trace of a big backbone costs seconds). Graph mode: the smoke profile
    # itself runs eagerly.
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    traces = []
    original = TensorFlowTrainer.train_step

    def counted(self, data):
        traces.append(1)
        return original(self, data)

    monkeypatch.setattr(TensorFlowTrainer, "train_step", counted)
    (x_tr, y_tr), (x_val, y_val) = arrays["train"], arrays["val"]
    cfg = train.family_config(smoke_params, "cnn", epochs=2, deterministic=False, run_eagerly=False)
    result = train.train_model(cfg, x_tr, y_tr, x_val, y_val, tmp_path / "w", tmp_path / "l", 8)
    assert len(traces) == 1
    assert len(result.history) == 2 and np.isfinite(result.history["loss"]).all()


class BlowUpSecondEpoch(keras.callbacks.Callback):
    """Scales the weights before the second epoch, which makes that epoch's val_loss worse."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            dense = self.model.layers[-1]
            dense.kernel.assign(dense.kernel * 100.0)


@pytest.mark.parametrize("epochs", [1, 2])
def test_fit_returns_the_best_epochs_weights(arrays, tmp_path, epochs):
    import tensorflow as tf

    # No batch norm and a learning rate of 0: only the callback changes the weights.
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255)])
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(8, activation="softmax"))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    before = model.layers[-1].get_weights()[0]
    (x_tr, y_tr), (x_val, y_val) = arrays["train"], arrays["val"]
    best, history, _ = train.fit_resumable(
        model,
        tf.data.Dataset.from_tensor_slices((x_tr, y_tr)).batch(32),
        tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(32),
        epochs,
        tmp_path / "work",
        tmp_path / "live",
        monitor="val_loss",
        mode="min",
        callbacks=[BlowUpSecondEpoch()],
        verbose=0,
    )
    assert len(history) == epochs
    np.testing.assert_array_equal(best.layers[-1].get_weights()[0], before)
    if epochs == 1:  # the last epoch is the best: the model in memory, not reloaded,
        assert best is model  # and never saved (train.saves_until_last_epoch)
        assert not (tmp_path / "work" / "best.keras").exists()
    else:  # the second epoch is worse: the first one's checkpoint, loaded
        assert history["val_loss"].iloc[1] > history["val_loss"].iloc[0]
        assert best is not model


def test_warmup_rises_to_the_rate_then_decays(smoke_params):
    opt = train.make_optimizer("adam", 1e-3, 100, warmup_fraction=0.1)
    lr = opt.learning_rate  # the schedule's value at the optimizer's step
    schedule = opt._learning_rate
    assert float(schedule(0)) == pytest.approx(1e-3 * train.WARMUP_START)
    assert float(schedule(5)) == pytest.approx(1e-3 * (train.WARMUP_START + 0.5 * (24 / 25)))
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) == pytest.approx(0.5e-3, rel=1e-3)  # halfway down the cosine
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    assert float(lr) == pytest.approx(1e-3 * train.WARMUP_START)
    plain = train.make_optimizer("adam", 1e-3, 100)._learning_rate
    assert float(plain(0)) == pytest.approx(1e-3) and float(plain(50)) == pytest.approx(0.5e-3)
    assert not train.make_optimizer("sgd", 1e-2, 100).use_ema
    ema = train.make_optimizer("sgd", 1e-2, 100, ema_momentum=0.9)
    assert ema.use_ema and ema.ema_momentum == 0.9


def test_ema_weights_are_validated_saved_and_returned(smoke_params, arrays, tmp_path):
    """With ``ema_momentum`` the epoch chosen on validation is the average's, and the model
    returned is that average: its validation loss is the logged one (a continuous number,
    so agreement is no coincidence), and it differs from training without the average."""
    (x_tr, y_tr), (x_val, y_val) = arrays["train"], arrays["val"]
    val = train.make_dataset(x_val, y_val, 128, False, n_classes=8)
    losses = {}
    for ema in (0.0, 0.5):
        cfg = train.family_config(smoke_params, "cnn", epochs=2, ema_momentum=ema)
        out = tmp_path / str(ema)
        result = train.train_model(cfg, x_tr, y_tr, x_val, y_val, out / "w", out / "l", verbose=0)
        assert train._uses_ema(result.model) == bool(ema)
        chosen = result.history["val_accuracy"].idxmax()
        loss = result.model.evaluate(val, verbose=0, return_dict=True)["loss"]
        assert loss == pytest.approx(result.history["val_loss"].loc[chosen], rel=1e-4)
        losses[ema] = list(result.history["val_loss"])
    # the training weights follow the same deterministic path either way: only the average
    # makes the first epoch's validation loss differ
    assert losses[0.0][0] != losses[0.5][0]


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated interruption")


def test_interrupted_run_resumes_and_finishes(smoke_params, arrays, tmp_path):
    (x_tr, y_tr), (x_val, y_val) = arrays["train"], arrays["val"]
    cfg = train.family_config(smoke_params, "cnn", epochs=2, deterministic=False)
    work, live = tmp_path / "work", tmp_path / "live"
    with pytest.raises(KeyboardInterrupt):
        train.train_model(
            cfg, x_tr, y_tr, x_val, y_val, work, live, callbacks=[StopAfterFirstEpoch()], verbose=0
        )
    assert (work / "backup").exists() and (work / "best.keras").exists()
    result = train.train_model(cfg, x_tr, y_tr, x_val, y_val, work, live, verbose=0)
    assert list(result.history.index) == [0, 1]  # epoch 1 from before, epoch 2 resumed
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(result.history.columns)
    assert not (work / "backup").exists()  # finished: backup cleared


def test_a_run_saves_stable_outputs_and_is_reused(smoke_params, project):
    record = experiment.run_variant(smoke_params, "cnn", root=project, verbose=0, epochs=1)
    out = project / "models/cnn/cnn"
    assert (out / "model.keras").is_file() and (out / "predictions.npz").is_file()
    saved = json.loads((out / "run.json").read_text())
    for key in ("image_size", "epochs", "optimizer", "weights", "parameter_count", "best_epoch"):
        assert saved[key] is not None, key
    assert saved["data_hash"] == preprocess.manifest_hash(project / "data/interim/manifest.csv")
    # nothing of the clock or the machine in the run's own files ...
    assert not {"train_minutes", "provenance", "machine"} & set(saved)
    # ... they are in the stage's timing file
    timing = json.loads((project / "metrics/timings/train-cnn.json").read_text())["cnn"]
    assert timing["train_minutes"] >= 0 and timing["inference_images_per_second"] > 0
    assert "cpu" in timing["provenance"]["hardware"] and timing["machine"]
    # the report side: test scores with CIs, and the timing merged back for the tables
    test = record["test"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "ece", "per_class"):
        assert key in test
    assert len(test["confusion_matrix"]) == 8 and set(test["ci95"]) == {"accuracy", "macro_f1"}
    assert record["train_minutes"] == timing["train_minutes"]
    for key in ("git_commit", "params_hash", "data_hash", "libraries", "hardware"):
        assert key in record["provenance"]
    path = experiment.write_family_metrics("cnn", [record], root=project)
    metrics = json.loads(path.read_text())
    assert metrics["cnn"]["test_accuracy"] == round(record["test"]["accuracy"], 4)
    assert "train_minutes" not in metrics["cnn"]
    # asked again under the same key: reused, not retrained (the model file is untouched)
    stamp = (out / "model.keras").stat().st_mtime_ns
    again = experiment.run_variant(smoke_params, "cnn", root=project, verbose=0, epochs=1)
    assert (out / "model.keras").stat().st_mtime_ns == stamp
    assert again["test"]["accuracy"] == record["test"]["accuracy"]
    # another config is another key: trained anew
    experiment.run_variant(smoke_params, "cnn", root=project, verbose=0, epochs=2)
    assert json.loads((out / "run.json").read_text())["epochs"] == 2


MIRRORED = """
import sys
from pathlib import Path
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from bloodcells import train
from bloodcells.config import load_params
devices = tuple(d.name for d in tf.config.list_logical_devices("CPU"))
strategy = train.distribution_strategy(devices)
assert strategy.num_replicas_in_sync == 2, strategy
params = load_params(profile="smoke")
cfg = train.family_config(params, "cnn", epochs=1, deterministic=False, image_size=32)
rng = np.random.default_rng(0)
x = rng.integers(0, 255, (48, 32, 32, 3), dtype=np.uint8)
y = np.arange(48) % 8
result = train.train_model(cfg, x, y, x[:16], y[:16], Path(sys.argv[1]), Path(sys.argv[2]),
                           verbose=0, strategy=strategy)
assert len(result.history) == 1 and np.isfinite(result.history["loss"]).all()
print("replicas", strategy.num_replicas_in_sync, "steps/epoch", -(-48 // (cfg.batch_size * 2)))
"""


def test_training_runs_under_a_mirrored_strategy(tmp_path):
    """tf.distribute: a MirroredStrategy over two devices (two logical CPUs here, every
    visible GPU on a multi-GPU machine) builds, compiles and trains through train_model."""
    import subprocess
    import sys

    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "work"), str(tmp_path / "live")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replicas 2" in done.stdout


def test_one_device_uses_the_default_strategy():
    import tensorflow as tf

    if len(tf.config.list_logical_devices("GPU")) < 2:
        assert train.distribution_strategy().num_replicas_in_sync == 1


def _phase_model():
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten()]
    )
    model.add(keras.layers.Dense(16, activation="relu", name="base"))
    model.add(keras.layers.Dense(8, activation="softmax", name="head"))
    return model


@pytest.mark.parametrize("winner", ["joint", "frozen"])
def test_hybrid_scores_the_weights_of_the_phase_it_selects(
    smoke_params, arrays, tmp_path, monkeypatch, winner
):
    """Each phase keeps its own best weights; the phase chosen on validation is returned.

    The validation accuracies are planted so that either phase wins; the joint phase's
    weights must survive phase 2 (which once trained the joint model in place)."""
    from bloodcells import hybrid

    trained = {}
    real = hybrid.train_model

    def planted(cfg, *args, **kwargs):
        result = real(cfg, *args, **kwargs)
        phase = "frozen" if "frozen" in str(args[4]) else "joint"
        trained[phase] = [w.copy() for w in result.model.get_weights()]
        history = result.history.copy()
        history["val_accuracy"] = 0.9 if phase == winner else 0.1
        return dataclasses.replace(result, history=history)

    def freeze(model):
        model.get_layer("base").trainable = False
        return model

    monkeypatch.setattr(hybrid, "train_model", planted)
    cfg = train.family_config(smoke_params, "cnn", epochs=1, deterministic=False)
    cfg = dataclasses.replace(cfg, learning_rate=0.05)
    dirs = {"work": tmp_path / "work", "live": tmp_path / "live"}
    chosen, phases = hybrid.train_phases(cfg, cfg, _phase_model(), arrays, dirs, 0, freeze)
    assert phases["selected_phase"] == winner
    got = chosen.model.get_weights()
    other = "frozen" if winner == "joint" else "joint"
    for a, b in zip(got, trained[winner], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(got, trained[other], strict=True))
    assert len(chosen.history) == 2  # both phases' epochs in the record


def test_a_hybrid_without_joint_epochs_trains_only_its_head(smoke_params, arrays, tmp_path):
    """No joint phase: the frozen phase trains the built model's head, its base untouched,
    and is the phase selected (there is no other)."""
    from bloodcells import hybrid

    def freeze(model):
        model.get_layer("base").trainable = False
        return model

    cfg = train.family_config(smoke_params, "cnn", epochs=1, deterministic=False)
    cfg = dataclasses.replace(cfg, learning_rate=0.05)
    model = _phase_model()
    base, head = (model.get_layer(n).get_weights() for n in ("base", "head"))
    dirs = {"work": tmp_path / "work", "live": tmp_path / "live"}
    chosen, phases = hybrid.train_phases(
        dataclasses.replace(cfg, epochs=0), cfg, model, arrays, dirs, 0, freeze
    )
    assert phases["selected_phase"] == "frozen" and phases["val_accuracy_joint"] is None
    assert phases["val_accuracy_frozen"] == float(chosen.history["val_accuracy"].max())
    assert len(chosen.history) == cfg.epochs  # the frozen epochs only
    assert not (dirs["work"] / "joint").exists()
    for a, b in zip(chosen.model.get_layer("base").get_weights(), base, strict=True):
        np.testing.assert_array_equal(a, b)
    after = chosen.model.get_layer("head").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(after, head, strict=True))


def test_the_hybrid_verdict_says_how_the_hybrid_was_trained():
    from bloodcells.report import hybrid_verdict

    def run(variant, accuracy, **extra):
        ci = {"accuracy": [accuracy - 0.01, accuracy + 0.01]}
        test = {"accuracy": accuracy, "ci95": ci}
        return {"variant": variant, "test": test, "image_size": 80, "from_stages": True, **extra}

    branches = [run("inceptionv3", 0.85), run("xception", 0.88)]
    both = hybrid_verdict(run("hybrid", 0.94, joint_epochs=1, frozen_epochs=1), branches)
    assert "6.00 points above xception" in both
    assert "trained 1 joint + 1 frozen epoch(s) at 80 px, starting from the stage" in both
    head = hybrid_verdict(run("hybrid", 0.87, joint_epochs=0, frozen_epochs=1), branches)
    assert "1.00 points below xception" in head
    assert "Only its head was trained, 1 epoch(s) at 80 px" in head and "joint" not in head


def test_training_clock_leaves_validation_out():
    # validation made slow on purpose (a pause per validation batch): the clock that gives
    # train_images_per_second must not count it, and counts the epochs this call ran
    x = np.random.default_rng(0).random((64, 4)).astype("float32")
    y = keras.utils.to_categorical(np.arange(64) % 2, 2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    pause = keras.callbacks.LambdaCallback(on_test_batch_end=lambda *_, **__: time.sleep(0.1))
    clock = train.training_clock()
    t0 = time.perf_counter()
    model.fit(x, y, validation_data=(x, y), batch_size=32, epochs=3, verbose=0,
              callbacks=[clock, pause])  # fmt: skip
    total = time.perf_counter() - t0
    assert clock.state["epochs"] == 3
    assert 0 < clock.state["seconds"] <= total - 3 * 2 * 0.1  # six paused batches left out
