"""The one training code path for every family.

Input comes from the cached uint8 arrays, held in memory, through ``tf.data``
(:mod:`bloodcells.inputs`); augmentation (random flips and 90-degree rotations, which leave a
single-cell image a valid single-cell image) and oversampling touch the training split only.
Each run keeps the best validation epoch as ``best.keras``, backs up every epoch so an
interrupted run resumes where it stopped, with the batches it would have had, and logs
per-epoch curves with dvclive.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from bloodcells.config import BALANCE, OPTIMIZERS, least_epochs
from bloodcells.families import (  # not bloodcells.models: a config needs no Keras
    BN_MOMENTUM,
    CNN_WIDTHS,
    WHITENING_PATCHES,
    CnnOptions,
    ModelConfigError,
    check_size,
    check_weights,
    check_widths,
    get_family,
)
from bloodcells.inputs import VIEWS, make_dataset, progressive_sizes, steps_per_epoch


@dataclass
class TrainConfig:
    """Everything one training run needs; resolved from params by :func:`family_config`."""

    family: str
    image_size: int
    epochs: int
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 32
    weights: str = "none"
    dense_units: int = 256
    dropout: float = 0.5
    frozen_fraction: float = 0.0
    balance: str = "class_weight"
    augment: bool = True
    # how augmentation picks each image's view every epoch (bloodcells.inputs.VIEWS): fresh
    # at random, or alternating through all eight over any eight epochs
    dihedral_views: str = "random"
    label_smoothing: float = 0.0
    # the weights validated, saved and returned are an exponential moving average of the
    # training weights with this momentum (the optimizer's ``use_ema``); 0 = off
    ema_momentum: float = 0.0
    # this fraction of the steps warms the learning rate up linearly (from 1/25 of it)
    # before the cosine decay: a one-cycle schedule; 0 = cosine decay from the first step
    warmup_fraction: float = 0.0
    conv_widths: list | None = None  # the CNN's filters per block; None = models.CNN_WIDTHS
    # the CNN's BatchNorm: the moving statistics' momentum, and whether it learns a scale
    bn_momentum: float = BN_MOMENTUM
    bn_scale: bool = True
    # the CNN's frozen patch-whitening stem: its patch size (models.WHITENING_PATCHES), 0 = none
    whitening: int = 0
    # progressive resizing of the (fully convolutional) CNN: the first epoch's image size,
    # growing linearly to image_size by the last (inputs.progressive_sizes); 0 = off
    progressive_from: int = 0
    seed: int = 42
    deterministic: bool = True
    graph_optimizer: bool = True
    run_eagerly: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self, key: str = "models") -> TrainConfig:
        fam = get_family(self.family, f"{key}")
        check_size(fam, self.image_size, f"{key}.image_size")
        check_weights(fam, self.weights, f"{key}.weights")
        frozen = self.extra.get("frozen_epochs") if self.family == "hybrid" else None
        least = least_epochs(self.family, frozen)
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < least:
            raise ModelConfigError(
                f"Params key '{key}.epochs' must be a positive integer"
                + (
                    " (the hybrid's may be 0 when frozen_epochs is at least 1)"
                    if frozen is not None
                    else ""
                )
                + f"; got {self.epochs!r}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ModelConfigError(
                f"Params key '{key}.optimizers' has {self.optimizer!r}; "
                f"allowed: {', '.join(OPTIMIZERS)}."
            )
        if self.balance not in BALANCE:
            raise ModelConfigError(
                f"Params key '{key}.balance' is {self.balance!r}; allowed: {', '.join(BALANCE)}."
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ModelConfigError(
                f"Params key 'train.batch_size' must be >= 1; got {self.batch_size!r}."
            )
        if not self.learning_rate or self.learning_rate <= 0:
            raise ModelConfigError(
                f"Params key '{key}.learning_rate' must be > 0; got {self.learning_rate!r}."
            )
        if self.conv_widths is not None:
            if self.family != "cnn":
                raise ModelConfigError(
                    f"Params key '{key}.conv_widths' applies to the cnn family only; "
                    f"{self.family} has a fixed architecture. Remove the key."
                )
            check_widths(self.conv_widths, self.image_size, f"{key}.conv_widths")
        self._validate_cnn_options(key)
        self._validate_progressive(key)
        for flag in ("deterministic", "graph_optimizer", "run_eagerly", "augment", "bn_scale"):
            if not isinstance(getattr(self, flag), bool):
                raise ModelConfigError(
                    f"Params key 'train.{flag}' (or '{key}.{flag}') must be true or false; "
                    f"got {getattr(self, flag)!r}."
                )
        if self.dihedral_views not in VIEWS:
            raise ModelConfigError(
                f"Params key '{key}.dihedral_views' (or 'train.dihedral_views') is "
                f"{self.dihedral_views!r}; allowed: {', '.join(VIEWS)}."
            )
        for name in ("label_smoothing", "ema_momentum", "warmup_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                value = None
            if value is None or not 0.0 <= value < 1.0:
                raise ModelConfigError(
                    f"Params key '{key}.{name}' (or 'train.{name}') must be a number in "
                    f"[0, 1); got {getattr(self, name)!r}."
                )
        return self

    def changed_cnn_options(self, progressive: bool = False) -> list[str]:
        """The names of the CNN-only settings (:class:`CnnOptions`, and with
        ``progressive`` also ``progressive_from``) this config changes from their defaults."""
        defaults = asdict(CnnOptions()) | ({"progressive_from": 0} if progressive else {})
        return [name for name, default in defaults.items() if getattr(self, name) != default]

    def _validate_cnn_options(self, key: str) -> None:
        changed = self.changed_cnn_options()
        if changed and self.family != "cnn":
            raise ModelConfigError(
                f"Params key '{key}.{changed[0]}' applies to the cnn family only; "
                f"{self.family} has a fixed architecture. Remove the key."
            )
        momentum = self.bn_momentum
        if isinstance(momentum, bool) or not isinstance(momentum, int | float):
            momentum = None
        if momentum is None or not 0.0 < momentum < 1.0:
            raise ModelConfigError(
                f"Params key '{key}.bn_momentum' (or 'train.bn_momentum') must be a number in "
                f"(0, 1); got {self.bn_momentum!r}."
            )
        if self.whitening not in (0, *WHITENING_PATCHES) or isinstance(self.whitening, bool):
            raise ModelConfigError(
                f"Params key '{key}.whitening' (or 'train.whitening') is {self.whitening!r}; "
                f"allowed: 0 (no stem) or a patch size, {' or '.join(map(str, WHITENING_PATCHES))}."
            )

    def _validate_progressive(self, key: str) -> None:
        start = self.progressive_from
        if start == 0 and not isinstance(start, bool):
            return
        if self.family != "cnn":
            raise ModelConfigError(
                f"Params key '{key}.progressive_from' applies to the cnn family only (a fully "
                f"convolutional model); {self.family} trains at one size. Remove the key."
            )
        least = 2 ** len(self.conv_widths or CNN_WIDTHS)
        if (
            isinstance(start, bool)
            or not isinstance(start, int)
            or not (least <= start < self.image_size)
        ):
            raise ModelConfigError(
                f"Params key '{key}.progressive_from' (or 'train.progressive_from') is "
                f"{start!r}; use 0 (off) or a size from {least} px (the CNN's blocks halve it "
                f"{least.bit_length() - 1} times) up to below the image size, {self.image_size}."
            )

    def epoch_sizes(self) -> list[int] | None:
        """Each epoch's training image size under progressive resizing; None when off."""
        if not self.progressive_from:
            return None
        return progressive_sizes(self.progressive_from, self.image_size, self.epochs)

    def cnn_options(self) -> CnnOptions:
        """The CNN's BatchNorm and stem settings of this config."""
        return CnnOptions(self.bn_momentum, self.bn_scale, self.whitening)


GENERIC_KEYS = {f.name for f in fields(TrainConfig)} - {"family", "extra", "optimizer"}


def family_config(params: dict, key: str, optimizer: str | None = None, **overrides) -> TrainConfig:
    """Resolve ``models.<key>`` over the shared ``train`` defaults into a TrainConfig.

    ``key`` is the params entry (usually the family name); ``optimizer`` picks one of the
    family's ``optimizers`` (default: the first). ``None`` values fall back to ``train``.
    """
    models = params.get("models", {})
    if key not in models:
        raise ModelConfigError(
            f"Unknown model family {key!r} (params key 'models.{key}'). "
            f"Configured: {', '.join(models) or '(none)'}."
        )
    entry = dict(models[key])
    shared = params.get("train", {})
    optimizers = entry.pop("optimizers", None) or ["adam"]
    opt = optimizer or optimizers[0]
    values = {"family": entry.pop("family", key), "optimizer": opt}
    for name in GENERIC_KEYS:
        value = entry.pop(name, None)
        if value is None:
            value = shared.get(name)
        if value is not None:
            values[name] = value
    if values.get("learning_rate") is None:
        values["learning_rate"] = shared.get("learning_rates", {}).get(opt, 1e-3)
    values["extra"] = entry
    values.update(overrides)
    return TrainConfig(**values).validate(f"models.{key}")


def configure_tensorflow(cfg: TrainConfig) -> None:
    """Seeds, op determinism and TensorFlow's graph optimizer as ``cfg`` says, before a run.

    The graph optimizer (grappler: op fusion, constant folding, ...) makes every step faster
    and the first one slower: for DenseNet-201 on the 70 images of the smoke profile it
    costs 9 s of a 61 s run. The smoke profile turns it off; every other profile keeps it.
    With ``cfg.run_eagerly`` (the smoke profile) there are few graphs left for it to work on.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": not cfg.graph_optimizer}
    )


@functools.cache
def distribution_strategy(devices: tuple[str, ...] | None = None):
    """The ``tf.distribute`` strategy every model is built and trained under.

    A ``MirroredStrategy`` over every visible GPU when there are two or more (or over
    ``devices`` when given), else TensorFlow's default one-device strategy. Cached, so the
    builders and :func:`train_model` share one strategy object.
    """
    import tensorflow as tf

    if devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) < 2:
            return tf.distribute.get_strategy()
        devices = tuple(d.name for d in gpus)
    return tf.distribute.MirroredStrategy(list(devices))


def smote_oversample(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE in pixel space on the training images only; returns uint8 images and labels.

    Callers pass the training split and nothing else: synthetic images are interpolated
    between training neighbours, so no validation or test image can leak into training.
    Memory: the nearest-neighbour search holds the flattened training set as float64
    (8 bytes x N x size^2 x 3), which is why it runs at a reduced image size.
    """
    from imblearn.over_sampling import SMOTE

    counts = np.bincount(y)
    k = int(max(1, min(5, counts[counts > 0].min() - 1)))
    flat = np.asarray(x).reshape(len(x), -1)
    xs, ys = SMOTE(random_state=seed, k_neighbors=k).fit_resample(flat, y)
    xs = np.clip(np.rint(xs), 0, 255).astype(np.uint8).reshape(-1, *x.shape[1:])
    return xs, ys.astype(np.int64)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n_classes).astype(float)
    weights = np.divide(len(y), n_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return {i: float(w) for i, w in enumerate(weights)}


#: a warm-up starts the learning rate at this fraction of its peak (one-cycle's 1/25)
WARMUP_START = 1 / 25


def make_optimizer(
    name: str,
    learning_rate: float,
    total_steps: int | None = None,
    warmup_fraction: float = 0.0,
    ema_momentum: float = 0.0,
):
    """The optimizer, with the learning rate decayed along a cosine to 0 over ``total_steps``.

    The decay settles the weights (and BatchNormalization's moving statistics) by the last
    epochs, which a short CPU run needs: at a constant 1e-3, validation accuracy of a
    from-scratch CNN swung between 67% and 18% from one epoch to the next.
    ``warmup_fraction`` of the steps first rise linearly from ``WARMUP_START`` times the
    rate to it (a one-cycle schedule); ``ema_momentum`` keeps an exponential moving average
    of the weights (Keras's ``use_ema``; :func:`fit_resumable` validates and saves it).
    """
    import keras

    if total_steps:
        warm = int(round(total_steps * warmup_fraction))
        if warm:
            learning_rate = keras.optimizers.schedules.CosineDecay(
                learning_rate * WARMUP_START,
                max(total_steps - warm, 1),
                warmup_target=learning_rate,
                warmup_steps=warm,
            )
        else:
            learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)
    ema = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, **ema)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, **ema)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, **ema)
    raise ModelConfigError(f"Unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}.")


def read_history(live_dir: Path):
    """Per-epoch metrics logged by dvclive, as a DataFrame indexed by epoch."""
    import pandas as pd

    plots = Path(live_dir) / "plots" / "metrics"
    frames = []
    for tsv in sorted(plots.rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        # dvclive files Keras's "val_x" under eval/x and "x" under train/x
        split, _, metric = str(tsv.relative_to(plots).with_suffix("")).rpartition("/")
        name = {"train": metric, "eval": f"val_{metric}"}.get(split, f"{split}_{metric}")
        frames.append(df.set_index("step")[df.columns[-1]].rename(name))
    return pd.concat(frames, axis=1) if frames else pd.DataFrame()


@dataclass
class TrainResult:
    model: object
    history: object
    seconds: float
    images_per_second: float
    config: dict
    train_size: int


def time_left(epochs: int, label: str = ""):
    """A Keras callback that prints, after each epoch, the epochs done and the time left
    for this model at the pace of this call's epochs (a resumed run counts from where it
    resumed)."""
    import keras

    state: dict = {}

    def begin(logs=None):
        state.update(t0=time.perf_counter(), first=None)

    def end(epoch, logs=None):
        state["first"] = epoch if state["first"] is None else state["first"]
        pace = (time.perf_counter() - state["t0"]) / (epoch + 1 - state["first"])
        print(
            f"{label}epoch {epoch + 1}/{epochs} done, {pace / 60:.1f} min/epoch, "
            f"about {(epochs - epoch - 1) * pace / 60:.1f} min left for this model",
            flush=True,
        )

    return keras.callbacks.LambdaCallback(on_train_begin=begin, on_epoch_end=end)


def training_clock():
    """A Keras callback that times the training part of each epoch, validation excluded:
    ``.state["seconds"]`` summed over the epochs this call ran, ``.state["epochs"]``."""
    import keras

    state = {"seconds": 0.0, "epochs": 0, "t0": None}

    def begin(epoch, logs=None):
        state["t0"] = time.perf_counter()

    def stop(*_, **__):  # validation starts (or the epoch ends without one)
        if state["t0"] is not None:
            state["seconds"] += time.perf_counter() - state["t0"]
            state["epochs"] += 1
            state["t0"] = None

    callback = keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=stop)
    callback.on_test_begin = stop
    callback.state = state
    return callback


def epoch_seeds(seed: int):
    """A Keras callback that sets every random-number generator of the model (dropout's
    Keras ``SeedGenerator`` states) from (``seed``, epoch) when each epoch begins.

    An epoch's dropout masks then depend on the run's seed and the epoch's number only,
    not on how many steps this process has taken: a run resumed after an interruption
    draws the masks the uninterrupted run drew (the data order is keyed the same way, in
    :func:`bloodcells.inputs.epoch_batches`)."""
    import keras

    def generators(model) -> list:
        out = []
        for layer in model._flatten_layers(include_self=True, recursive=True):
            out += [g for g in getattr(layer, "_seed_generators", []) if g not in out]
        return out

    def begin(epoch, logs=None):
        for i, gen in enumerate(generators(callback.model)):
            state = np.array([seed * 7919 + i, epoch << 20])
            gen.state.assign(keras.ops.convert_to_tensor(state, dtype=gen.state.dtype))

    callback = keras.callbacks.LambdaCallback(on_epoch_begin=begin)
    return callback


def saves_until_last_epoch(
    backup: Path, best: Path, epochs: int, monitor: str, mode: str
) -> tuple[object, object]:
    """Keras's ``BackupAndRestore`` in ``backup`` and its best-epoch ``ModelCheckpoint`` in
    ``best``, neither saving after the last epoch, whose saves would never be read:
    training ends there and deletes the backup, and :func:`fit_resumable` returns the model
    in memory when the last epoch is the best (the checkpoint then only notes that it
    improved). That is every one-epoch run's only saves, seconds each for the large
    backbones. A run stopped after its last epoch began resumes from the backup of the one
    before, with the best checkpoint among the epochs before, as one stopped during it does.
    """
    import keras

    class BackupBeforeLastEpoch(keras.callbacks.BackupAndRestore):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 < epochs:
                super().on_epoch_end(epoch, logs)

    class CheckpointBeforeLastEpoch(keras.callbacks.ModelCheckpoint):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 < epochs:
                super().on_epoch_end(epoch, logs)
                return
            current = (logs or {}).get(self.monitor)
            better = current is not None and (
                self.best is None or (current > self.best if mode == "max" else current < self.best)
            )
            if better:
                self.best = float(current)

    return (
        BackupBeforeLastEpoch(str(backup), delete_checkpoint=True),
        CheckpointBeforeLastEpoch(str(best), monitor=monitor, mode=mode, save_best_only=True),
    )


def fit_resumable(
    model,
    train_ds,
    val_ds,
    epochs: int,
    work_dir: Path,
    live_dir: Path,
    monitor: str = "val_accuracy",
    mode: str = "max",
    class_weight: dict | None = None,
    callbacks: list | None = None,
    verbose: int = 2,
    steps: int | None = None,
    seed: int = 0,
):
    """``model.fit`` that keeps the best epoch and resumes after an interruption.

    ``steps`` is the number of batches per epoch when ``train_ds`` holds every epoch back
    to back (:func:`bloodcells.inputs.make_dataset`); build it from
    :func:`completed_epochs` so a resumed run continues with the batches it would have had.

    ``seed`` keys each epoch's dropout masks (:func:`epoch_seeds`), so a resumed run ends
    with the weights of an uninterrupted one.

    ``work_dir`` holds ``best.keras`` and ``backup/`` (Keras's BackupAndRestore) while the
    run lasts: rerunning after an interruption resumes from the last finished epoch, with
    the best-so-far checkpoint and the dvclive log in ``live_dir`` resumed with it. Both
    live outside DVC's outputs, which DVC deletes before rerunning a stage. Returns
    (the model with its best weights, history, seconds): the model in memory when the last
    epoch was the best, else the one loaded from ``best.keras``.
    """
    import keras
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    work_dir.mkdir(parents=True, exist_ok=True)
    best = work_dir / "best.keras"
    backup = work_dir / "backup"
    resuming = backup.exists() and best.exists()
    live = Live(dir=str(live_dir), resume=resuming, report=None, save_dvc_exp=False, dvcyaml=None)
    backup_callback, checkpoint = saves_until_last_epoch(backup, best, epochs, monitor, mode)
    if resuming:  # keep the best epoch from before the interruption
        earlier = read_history(live_dir)
        if monitor in earlier:
            pick = earlier[monitor].max() if mode == "max" else earlier[monitor].min()
            checkpoint.best = float(pick)
        # dvclive resumes at step 0 when only one step was logged; continue after the last.
        live.step = len(earlier)
    # checkpoint.best after each epoch of this call, to tell whether the last one was saved
    bests = [checkpoint.best]
    # With an EMA of the weights (the optimizer's ``use_ema``), validation, the checkpoint and
    # the returned model all hold the average; the backup, saved before the swap, holds the
    # training weights (and the average in the optimizer), so a resumed run continues both.
    ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if _uses_ema(model) else []
    cbs = [
        backup_callback,
        *ema,
        checkpoint,
        keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: bests.append(checkpoint.best)),
        DVCLiveCallback(live=live),
        epoch_seeds(seed),
        *([time_left(epochs, f"[{Path(live_dir).name}] ")] if verbose else []),
        *(callbacks or []),
    ]
    t0 = time.perf_counter()
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        steps_per_epoch=steps,
        class_weight=class_weight,
        callbacks=cbs,
        shuffle=False,  # the input pipeline shuffles, with its own seed
        verbose=verbose,
    )
    seconds = time.perf_counter() - t0
    if len(bests) < 2 or bests[-1] == bests[-2]:
        # The best epoch is an earlier one (or none ran in this call): load it. When the last
        # epoch was the best, the model in memory is what best.keras holds; loading it again
        # would rebuild the architecture (seconds for the big backbones) for nothing.
        model = keras.saving.load_model(best, safe_mode=True)
    return model, read_history(live_dir), seconds


def _uses_ema(model) -> bool:
    return bool(getattr(getattr(model, "optimizer", None), "use_ema", False))


def completed_epochs(work_dir: Path) -> int:
    """Epochs an interrupted run in ``work_dir`` finished (Keras's BackupAndRestore
    record); 0 for a fresh run."""
    import json

    record = Path(work_dir) / "backup" / "training_metadata.json"
    if not record.is_file():
        return 0
    return int(json.loads(record.read_text()).get("epoch", 0))


def compiled_classifier(cfg: TrainConfig, total_steps: int, n_classes: int = 8, model=None):
    """``model`` (built from ``cfg`` when None) compiled as every family trains: the
    configured optimizer with its schedule over ``total_steps``, cross-entropy with
    label smoothing, accuracy; its optimizer and metric variables already created
    (:func:`build_state`). ``cfg.run_eagerly`` skips tracing the train and test steps
    into graphs: slower steps, no tracing (the smoke profile's few steps)."""
    import keras

    from bloodcells.models import build_model

    if model is None:
        model = build_model(
            cfg.family,
            cfg.image_size,
            n_classes,
            cfg.weights,
            cfg.dense_units,
            cfg.dropout,
            cfg.frozen_fraction,
            cfg.conv_widths,
            cfg.cnn_options(),
        )
    model.compile(
        optimizer=make_optimizer(
            cfg.optimizer, cfg.learning_rate, total_steps, cfg.warmup_fraction, cfg.ema_momentum
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
        run_eagerly=cfg.run_eagerly,
    )
    build_state(model, n_classes)
    return model


def build_state(model, n_classes: int = 8) -> None:
    """Create the optimizer's and the compiled metrics' variables before ``fit``.

    Without a tf.distribute strategy, Keras defers this to the first trace of the train
    step; variables created inside a ``tf.function`` make TensorFlow trace it a second
    time. For DenseNet-201 one trace costs 10-20 s here, which the smoke DAG pays for
    every model it trains. ``_symbolic_build`` is what Keras itself runs under a strategy.
    """
    x_one = np.zeros((1, *model.input_shape[1:]), dtype=np.uint8)
    y_one = np.eye(n_classes, dtype=np.float32)[:1]
    if hasattr(model, "_symbolic_build"):
        model._symbolic_build(data_batch=(x_one, y_one, None))
    elif not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def train_model(
    cfg: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    work_dir: Path,
    live_dir: Path,
    n_classes: int = 8,
    callbacks: list | None = None,
    verbose: int = 2,
    model=None,
    strategy=None,
) -> TrainResult:
    """Train one classifier; return it with the weights of its best validation epoch.

    The model is built from ``cfg`` unless ``model`` is given (the hybrid's phases, the
    SupCon classifier; build those under ``distribution_strategy().scope()``).
    Oversampling and augmentation apply to ``x_train`` only. Under a mirrored strategy
    each replica takes ``cfg.batch_size`` images per step. Interrupted runs resume (see
    :func:`fit_resumable`).
    """
    configure_tensorflow(cfg)
    class_weight = None
    if cfg.balance == "smote":
        x_train, y_train = smote_oversample(x_train, y_train, cfg.seed)
    elif cfg.balance == "class_weight":
        class_weight = balanced_class_weights(y_train, n_classes)
    strategy = strategy or distribution_strategy()
    batch_size = cfg.batch_size * strategy.num_replicas_in_sync
    with strategy.scope():
        model = compiled_classifier(
            cfg, cfg.epochs * steps_per_epoch(len(x_train), batch_size), n_classes, model
        )
    from bloodcells.models import accept_any_size, fit_whitening

    if cfg.whitening:
        fit_whitening(model, x_train)  # the frozen stem, from the images it trains on
    if cfg.progressive_from:
        accept_any_size(model)  # the early epochs' batches are smaller than its input
    train_ds = make_dataset(
        x_train,
        y_train,
        batch_size,
        True,
        cfg.augment,
        cfg.seed,
        n_classes,
        epochs=cfg.epochs,
        first_epoch=completed_epochs(work_dir),
        views=cfg.dihedral_views,
        sizes=cfg.epoch_sizes(),
    )
    val_ds = make_dataset(x_val, y_val, max(batch_size, 128), False, n_classes=n_classes)
    clock = training_clock()
    model, history, seconds = fit_resumable(
        model,
        train_ds,
        val_ds,
        cfg.epochs,
        work_dir,
        live_dir,
        class_weight=class_weight,
        callbacks=[*(callbacks or []), clock],
        verbose=verbose,
        steps=steps_per_epoch(len(x_train), batch_size),
        seed=cfg.seed,
    )
    trained = clock.state  # the epochs of this call, validation passes excluded
    return TrainResult(
        model=model,
        history=history,
        seconds=seconds,
        images_per_second=(
            len(x_train) * trained["epochs"] / trained["seconds"] if trained["seconds"] else 0.0
        ),
        config=asdict(cfg),
        train_size=len(x_train),
    )
