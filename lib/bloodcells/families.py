"""The model families' registry and settings checks, without Keras.

What a config needs to be validated and keyed (:class:`Family`, the size, width and
weights checks, the CNN's options) lives here, so the code that only reads trained runs
(the report notebooks, :mod:`bloodcells.experiment`) does not import TensorFlow: about
10 s per process on a 2-core AVX2 CPU. :mod:`bloodcells.models` builds the models and
re-exports all of this.
"""

from __future__ import annotations

from dataclasses import dataclass

from bloodcells.config import WEIGHTS

# Keras's default BatchNormalization momentum (0.99) lets the moving statistics lag far
# behind fast-changing weights in the few epochs a CPU budget allows: a model trained from
# scratch for one epoch then scores at chance in inference mode. 0.9 tracks them closely.
BN_MOMENTUM = 0.9


class ModelConfigError(ValueError):
    """A model setting is invalid; the message names the params key."""


@dataclass(frozen=True)
class CnnOptions:
    """The study's CNN beyond its widths (the speed runs' tweaks, issue 14): its
    BatchNorm layers' ``bn_momentum`` and whether they learn a scale (``bn_scale``; False:
    fixed at 1, a bias only), and ``whitening``, the patch size of a frozen patch-whitening
    stem (0: none; :func:`fit_whitening` sets it from the training images)."""

    bn_momentum: float = BN_MOMENTUM
    bn_scale: bool = True
    whitening: int = 0


@dataclass(frozen=True)
class Family:
    """What the registry knows of a family: its backbone, input scaling and minimum size."""

    name: str
    application: str | None  # keras.applications constructor, None for our own nets
    preprocess: str
    min_size: int
    weights_file: str | None = None  # the notop file Keras caches for imagenet


FAMILIES: dict[str, Family] = {
    "cnn": Family("cnn", None, "unit", 16),
    "unet": Family("unet", None, "unit", 16),
    "resnet50": Family(
        "resnet50", "ResNet50", "caffe", 32, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "vgg16": Family(
        "vgg16", "VGG16", "caffe", 32, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "densenet201": Family(
        "densenet201",
        "DenseNet201",
        "torch",
        32,
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "mobilenetv2": Family(
        "mobilenetv2",
        "MobileNetV2",
        "tf",
        32,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
    "inceptionv3": Family(
        "inceptionv3",
        "InceptionV3",
        "tf",
        75,
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "xception": Family(
        "xception", "Xception", "tf", 71, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "hybrid": Family("hybrid", "InceptionV3+Xception", "tf", 75),
    "resnet50v2": Family(
        "resnet50v2",
        "ResNet50V2",
        "tf",
        32,
        "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
}


def get_family(name: str, key: str = "family") -> Family:
    if name not in FAMILIES:
        raise ModelConfigError(
            f"Unknown model family {name!r} (params key '{key}'). "
            f"Known families: {', '.join(FAMILIES)}."
        )
    return FAMILIES[name]


def check_size(family: Family, image_size: int, key: str = "image_size") -> None:
    if not isinstance(image_size, int) or image_size < family.min_size:
        raise ModelConfigError(
            f"Params key '{key}' is {image_size!r}, but {family.name} needs images of at "
            f"least {family.min_size} px."
        )
    if family.name == "unet" and image_size % 8:
        raise ModelConfigError(
            f"Params key '{key}' is {image_size}; the U-Net pools three times, so the size "
            "must be a multiple of 8."
        )


def check_weights(family: Family, weights: str, key: str = "weights") -> None:
    if weights not in WEIGHTS:
        raise ModelConfigError(f"Params key '{key}' is {weights!r}; allowed: {', '.join(WEIGHTS)}.")
    if weights == "imagenet" and family.application is None:
        raise ModelConfigError(
            f"Params key '{key}': {family.name} has no ImageNet weights; use 'none'."
        )


#: the frozen patch-whitening stem's layer (:func:`fit_whitening` sets its weights)
WHITEN = "whiten"
#: patch sizes a whitening stem may have (2: 12 dimensions, 24 channels; 3: 27, 54)
WHITENING_PATCHES = (2, 3)


CNN_WIDTHS = (32, 64, 128, 256)


def check_widths(widths, image_size: int, key: str = "conv_widths") -> tuple[int, ...]:
    """Validate the CNN's per-block filter counts against the image size it pools down."""
    if (
        not isinstance(widths, (list, tuple))
        or not widths
        or not all(isinstance(w, int) and w > 0 for w in widths)
    ):
        raise ModelConfigError(
            f"Params key '{key}' must be a non-empty list of positive integers (filters per "
            f"block); got {widths!r}."
        )
    if image_size < 2 ** len(widths):
        raise ModelConfigError(
            f"Params key '{key}' has {len(widths)} blocks, each halving the image, but the "
            f"image is {image_size} px; use at least {2 ** len(widths)} px or fewer blocks."
        )
    return tuple(widths)


HYBRID_BRANCHES = {"inceptionv3": "inception_v3", "xception": "xception"}
