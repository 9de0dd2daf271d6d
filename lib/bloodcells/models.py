"""Model builders: one registry for every family of the study.

Every model takes raw pixels (``uint8`` or float in 0..255, NHWC) and does its own input
scaling in a serialisable :class:`Preprocess` layer, so a saved model carries its
preprocessing and predicting needs no guesswork. Backbones come from
``keras.applications`` with the paper's heads (global average pooling, dense, dropout,
softmax). Weights are explicit: ``"imagenet"`` or ``"none"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers

from bloodcells.families import (  # noqa: F401 - re-exported: the registry's one home
    BN_MOMENTUM,
    CNN_WIDTHS,
    FAMILIES,
    HYBRID_BRANCHES,
    WHITEN,
    WHITENING_PATCHES,
    CnnOptions,
    Family,
    ModelConfigError,
    check_size,
    check_weights,
    check_widths,
    get_family,
)


@keras.saving.register_keras_serializable(package="bloodcells")
class Preprocess(layers.Layer):
    """Scale 0..255 RGB pixels the way a backbone expects.

    ``unit``: [0, 1]; ``tf``: [-1, 1]; ``caffe``: BGR minus ImageNet means; ``torch``:
    [0, 1] normalised by ImageNet mean and std.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)
    CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

    def __init__(self, mode: str = "unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("unit", "tf", "caffe", "torch"):
            raise ValueError(f"Unknown preprocessing mode {mode!r}.")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, "float32")
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            return x[..., ::-1] - keras.ops.convert_to_tensor(self.CAFFE_MEAN_BGR)
        mean = keras.ops.convert_to_tensor(self.MEAN)
        std = keras.ops.convert_to_tensor(self.STD)
        return (x / 255.0 - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _imagenet_backbone(family: Family, image_size: int):
    ctor = getattr(keras.applications, family.application)
    try:
        return ctor(include_top=False, weights="imagenet", input_shape=(image_size, image_size, 3))
    except Exception as exc:  # Keras raises whatever the download raised
        raise ModelConfigError(
            f"ImageNet weights for {family.name} could not be loaded ({type(exc).__name__}: "
            f"{exc}). They are downloaded on first use; offline, copy "
            f"'{family.weights_file}' into {keras_cache_dir()} (Keras's cache folder, "
            "KERAS_HOME/models), or set the family's 'weights' to 'none'."
        ) from exc


def conv_block(x, filters: int, name: str, bn_momentum: float = BN_MOMENTUM, bn_scale: bool = True):
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, scale=bn_scale, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def whitening_filters(
    images: np.ndarray, patch: int, eps: float = 5e-4, max_images: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """The kernel and bias of a frozen patch-whitening convolution (the speed runs' stem,
    e.g. Keller Jordan's airbench): the eigenvectors of the covariance of every
    ``patch`` x ``patch`` RGB patch of ``images`` (uint8, scaled to [0, 1] as the CNN's
    input is), each divided by the square root of its eigenvalue (+ ``eps``), and their
    negatives, so the outputs are decorrelated, of unit variance and zero mean (the bias
    removes the patches' mean). Kernel ``(patch, patch, 3, 2 * patch * patch * 3)``,
    largest eigenvalue first. At most ``max_images`` images, evenly spaced (deterministic)."""
    if patch not in WHITENING_PATCHES:
        raise ModelConfigError(
            f"A whitening patch must be one of {WHITENING_PATCHES}; got {patch}."
        )
    from numpy.lib.stride_tricks import sliding_window_view

    dims = patch * patch * 3
    pick = np.unique(np.linspace(0, len(images) - 1, min(len(images), max_images)).astype(int))
    total, outer, count = np.zeros(dims), np.zeros((dims, dims)), 0
    for chunk in np.array_split(pick, max(1, len(pick) // 64)):
        x = images[chunk].astype(np.float32) / 255.0
        # (n, rows, cols, 3, patch, patch) -> rows of (patch_row, patch_col, channel): the
        # order of a Keras kernel's first three axes
        p = sliding_window_view(x, (patch, patch), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
        p = p.reshape(-1, dims).astype(np.float64)
        total += p.sum(axis=0)
        outer += p.T @ p
        count += len(p)
    mean = total / count
    values, vectors = np.linalg.eigh(outer / count - np.outer(mean, mean))
    order = np.argsort(values)[::-1]
    scaled = vectors[:, order] / np.sqrt(np.maximum(values[order], 0.0) + eps)
    weights = np.concatenate([scaled, -scaled], axis=1)
    kernel = weights.reshape(patch, patch, 3, 2 * dims).astype(np.float32)
    return kernel, (-mean @ weights).astype(np.float32)


def nested_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model`` and of the models nested in it (a backbone in a classifier,
    the hybrid's branches), depth first, each model's own layers in order."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from nested_layers(layer)


def find_layer(model: keras.Model, name: str):
    """Layer ``name`` in ``model`` or in any model nested in it; None when absent."""
    return next((layer for layer in nested_layers(model) if layer.name == name), None)


def accept_any_size(model: keras.Model) -> keras.Model:
    """Let ``model`` and every model nested in it take RGB images of any height and width,
    for training a fully convolutional model at several sizes (progressive resizing). The
    relaxed check is not saved: a saved copy expects the size it was built for."""
    for current in [model, *(m for m in nested_layers(model) if isinstance(m, keras.Model))]:
        current.input_spec = layers.InputSpec(ndim=4, axes={-1: 3})
    return model


def fit_whitening(model: keras.Model, images: np.ndarray) -> None:
    """Set the whitening stem of ``model`` (a CNN built with ``whitening``) from the
    training ``images``; it stays frozen while the rest trains."""
    layer = find_layer(model, WHITEN)
    if layer is None:
        raise ModelConfigError(
            f"Model {model.name!r} has no '{WHITEN}' layer: build it with 'whitening' set."
        )
    layer.set_weights(list(whitening_filters(images, layer.kernel_size[0])))


def _cnn_features(
    x,
    widths=CNN_WIDTHS,
    bn_momentum: float = BN_MOMENTUM,
    bn_scale: bool = True,
    whitening: int = 0,
):
    """The baseline sequential CNN: conv blocks, each followed by max pooling; with
    ``whitening`` (a patch size), a frozen patch-whitening convolution before them."""
    if whitening:
        channels = 2 * whitening * whitening * 3
        x = layers.Conv2D(channels, whitening, padding="same", trainable=False, name=WHITEN)(x)
    for i, w in enumerate(widths):
        x = conv_block(x, w, f"block{i + 1}", bn_momentum, bn_scale)
        x = layers.MaxPooling2D(name=f"block{i + 1}_pool")(x)
    return x


def _unet_features(x, widths=(32, 64, 128), bottleneck: int = 256):
    """A U-Net encoder-decoder; its full-resolution output map feeds the classifier."""
    skips = []
    for i, w in enumerate(widths):
        x = conv_block(x, w, f"enc{i + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"enc{i + 1}_pool")(x)
    x = conv_block(x, bottleneck, "bottleneck")
    for i, (w, skip) in reversed(list(enumerate(zip(widths, skips, strict=True)))):
        x = layers.Conv2DTranspose(w, 2, strides=2, name=f"dec{i + 1}_up")(x)
        x = layers.Concatenate(name=f"dec{i + 1}_concat")([x, skip])
        x = conv_block(x, w, f"dec{i + 1}")
    return x


def build_backbone(
    family: Family,
    image_size: int,
    weights: str,
    conv_widths: Sequence[int] | None = None,
    cnn: CnnOptions | None = None,
) -> keras.Model:
    """The feature extractor of a family, taking preprocessed float input.

    ``conv_widths`` sets the CNN's filters per block (default :data:`CNN_WIDTHS`), ``cnn``
    its BatchNorm and stem (:class:`CnnOptions`). Built from scratch, every
    BatchNormalization layer gets :data:`BN_MOMENTUM` (the CNN's: ``cnn.bn_momentum``),
    whichever model (classifier, SupCon encoder, hybrid branch) the backbone goes into.
    """
    inputs = keras.Input((image_size, image_size, 3), name="scaled")
    if family.name == "cnn":
        widths = check_widths(conv_widths or CNN_WIDTHS, image_size)
        opts = cnn or CnnOptions()
        features = _cnn_features(inputs, widths, opts.bn_momentum, opts.bn_scale, opts.whitening)
        return keras.Model(inputs, features, name="cnn_backbone")
    if family.name == "unet":
        return keras.Model(inputs, _unet_features(inputs), name="unet_backbone")
    if weights == "imagenet":
        return _imagenet_backbone(family, image_size)
    ctor = getattr(keras.applications, family.application)
    backbone = ctor(include_top=False, weights=None, input_shape=(image_size, image_size, 3))
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return backbone


def freeze_fraction(backbone: keras.Model, fraction: float) -> int:
    """Freeze the first ``fraction`` of the backbone's layers; return how many were frozen."""
    n = int(len(backbone.layers) * fraction)
    for layer in backbone.layers[:n]:
        layer.trainable = False
    return n


def build_model(
    family: str,
    image_size: int,
    n_classes: int = 8,
    weights: str = "none",
    dense_units: int = 256,
    dropout: float = 0.5,
    frozen_fraction: float = 0.0,
    conv_widths: Sequence[int] | None = None,
    cnn: CnnOptions | None = None,
) -> keras.Model:
    """Build a classifier of ``family`` for ``image_size`` px RGB input and ``n_classes``.

    The head is global average pooling, ``Dense(dense_units, relu)`` (skipped when 0),
    ``Dropout(dropout)`` and a softmax layer. ``frozen_fraction`` freezes that share of the
    backbone's first layers (the paper's partially frozen MobileNet-V2). ``conv_widths``
    sets the CNN's filters per block (one 2x pooling each) and ``cnn`` its BatchNorm and
    stem; other families ignore both.
    """
    fam = get_family(family)
    check_size(fam, image_size)
    check_weights(fam, weights)
    if family == "hybrid":
        return build_hybrid(image_size, n_classes, weights, dense_units or 512, dropout)
    if not 0.0 <= frozen_fraction <= 1.0:
        raise ModelConfigError(
            f"Params key 'frozen_fraction' must be in [0, 1]; got {frozen_fraction}."
        )
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = Preprocess(fam.preprocess, name="preprocess")(inputs)
    backbone = build_backbone(fam, image_size, weights, conv_widths, cnn)
    if frozen_fraction:
        freeze_fraction(backbone, frozen_fraction)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=family)


def load_saved(path: Path) -> keras.Model:
    """A saved model of this study (a run's ``model.keras``, a hybrid branch's, the exported
    one), for prediction: Keras's safe mode, which refuses to deserialise arbitrary Python
    code (a crafted file cannot run code when loaded), without compile state. The one
    loader: this module defines the ``Preprocess`` layer the files hold."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def branch_backbone(path: Path, family: str, image_size: int) -> keras.Model:
    """The trained backbone inside a saved family model (stages 08 and 09)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run the '{family}' training stage first, or set "
            "'models.hybrid.from_stages' to false to train both branches here."
        )
    model = load_saved(path)
    if model.input_shape[1] != image_size:
        raise ModelConfigError(
            f"{path} was trained at {model.input_shape[1]} px but 'models.hybrid.image_size' "
            f"is {image_size}; use the same size for the hybrid and both branches."
        )
    return model.get_layer(HYBRID_BRANCHES[family])


def save_for_inference(model: keras.Model, path: Path) -> None:
    """Save ``model``'s architecture and weights, without its optimizer or compile state.

    The saved family models are for prediction, the comparison and the hybrid's branches;
    an interrupted training resumes from its own backup, not from them. Adam's two moment
    estimates per weight would make the file three times as large, and DVC hashes and
    copies every byte of it into its cache.
    """
    keras.Model(model.inputs, model.outputs, name=model.name).save(path)
    stable_archive(path)


def stable_archive(path: Path, add: dict[str, bytes] | None = None) -> None:
    """Rewrite a ``.keras`` archive so the same weights give the same bytes: every entry
    dated 1980-01-01, Keras's ``date_saved`` dropped from ``metadata.json`` (the weights
    file itself is already deterministic). ``add`` puts further entries in (the export's
    metadata). Keras numbers shared objects in ``config.json`` by their ``id()`` in memory;
    they are renumbered in order of appearance. Written to a temporary file and renamed,
    so a crash leaves the old one."""
    import json
    import re
    import zipfile

    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        entries = {info.filename: zf.read(info) for info in zf.infolist()}
    if "metadata.json" in entries:
        meta = json.loads(entries["metadata.json"])
        meta.pop("date_saved", None)
        entries["metadata.json"] = json.dumps(meta).encode()
    if "config.json" in entries:  # shared objects are numbered by id(): renumber 1, 2, ...
        ids: dict[str, str] = {}
        entries["config.json"] = re.sub(
            rb'"shared_object_id": (\d+)',
            lambda m: b'"shared_object_id": ' + ids.setdefault(m[1], str(len(ids) + 1)).encode(),
            entries["config.json"],
        )
    entries.update(add or {})
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    tmp.replace(path)


def build_hybrid(
    image_size: int,
    n_classes: int = 8,
    weights: str = "none",
    dense_units: int = 512,
    dropout: float = 0.5,
    branches: dict[str, keras.Model] | None = None,
) -> keras.Model:
    """InceptionV3 and Xception side by side on one image, features concatenated.

    ``branches`` may hold trained backbones (keyed ``inceptionv3``/``xception``); missing
    ones are built from ``weights``. Both use the same [-1, 1] input scaling, so one
    preprocessing layer feeds both and the image is held once.
    """
    branches = dict(branches or {})
    for family in HYBRID_BRANCHES:
        fam = get_family(family)
        check_size(fam, image_size, "models.hybrid.image_size")
        if family not in branches:
            branches[family] = build_backbone(fam, image_size, weights)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = Preprocess("tf", name="preprocess")(inputs)
    features = [
        layers.GlobalAveragePooling2D(name=f"gap_{family}")(branches[family](x))
        for family in HYBRID_BRANCHES
    ]
    x = layers.Concatenate(name="concat")(features)
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="hybrid")


def freeze_branches(model: keras.Model) -> keras.Model:
    """Freeze both backbones of a hybrid (the paper's second phase)."""
    for name in HYBRID_BRANCHES.values():
        model.get_layer(name).trainable = False
    return model
