"""Stain and colour layers for training-side remedies (stage ``train-robust``, issue 18).

Two Keras layers, saved inside the models that use them (registered, so
:func:`bloodcells.models.load_saved` reads those files once this module is imported):

* :class:`RandomStainColour`: during training only, each image's haematoxylin / eosin /
  DAB optical densities scaled and shifted at random (Tellez et al. 2019's HED jitter),
  then its contrast and brightness; the identity at inference.
* :class:`StainNormalisation`: Reinhard et al. (2001) colour transfer in CIE L*a*b*:
  each image's per-channel mean and standard deviation mapped onto the training set's.
  At training and inference alike, so any lab's image is brought to PBC's colours first.

Written in ``keras.ops`` rather than taken from torchstain: its numpy backend works one
image at a time outside the model, and the point here is a model file that carries its
own normalisation (the exported model's contract is pixels in, probabilities out).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from bloodcells.shift import HED_FROM_RGB, RGB_FROM_HED

#: sRGB (D65) to CIE XYZ, and the D65 white point (the constants scikit-image uses)
XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def _const(a: np.ndarray):
    return ops.convert_to_tensor(np.asarray(a, dtype=np.float32))


def rgb_to_lab(x):
    """0..255 sRGB (any leading shape, channels last) to CIE L*a*b* (D65)."""
    c = ops.cast(x, "float32") / 255.0
    lin = ops.where(c > 0.04045, ops.power((c + 0.055) / 1.055, 2.4), c / 12.92)
    xyz = ops.matmul(lin, _const(XYZ_FROM_RGB.T)) / _const(WHITE_D65)
    f = ops.where(
        xyz > 0.008856, ops.power(ops.maximum(xyz, 1e-12), 1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0
    )
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return ops.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab):
    """CIE L*a*b* (D65) back to 0..255 sRGB, clipped to the gamut."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = ops.stack([lab[..., 1] / 500.0 + fy, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = ops.where(f > 0.2068966, ops.power(f, 3.0), (f - 16.0 / 116.0) / 7.787)
    lin = ops.maximum(ops.matmul(xyz * _const(WHITE_D65), _const(RGB_FROM_XYZ.T)), 0.0)
    c = ops.where(lin > 0.0031308, 1.055 * ops.power(lin, 1.0 / 2.4) - 0.055, 12.92 * lin)
    return ops.clip(c, 0.0, 1.0) * 255.0


def lab_statistics(x: np.ndarray, batch: int = 512) -> list[float]:
    """The mean of the per-image L*, a*, b* means and standard deviations over ``x``
    (uint8 images): Reinhard's target, as ``[mean L, a, b, sd L, a, b]``."""
    means, sds = [], []
    for i in range(0, len(x), batch):
        lab = ops.convert_to_numpy(rgb_to_lab(x[i : i + batch]))
        means.append(lab.mean(axis=(1, 2)))
        sds.append(lab.std(axis=(1, 2)))
    return [float(v) for v in np.concatenate(means).mean(0)] + [
        float(v) for v in np.concatenate(sds).mean(0)
    ]


@keras.saving.register_keras_serializable(package="bloodcells")
class StainNormalisation(keras.layers.Layer):
    """Reinhard colour transfer to fixed target statistics (:func:`lab_statistics`):
    0..255 RGB in, 0..255 RGB out, the same at training and inference."""

    def __init__(self, target: list[float], **kwargs):
        super().__init__(**kwargs)
        if len(target) != 6:
            raise ValueError(f"target must be 6 numbers (3 means, 3 sds); got {target!r}.")
        self.target = [float(v) for v in target]

    def call(self, x):
        lab = rgb_to_lab(x)
        mean = ops.mean(lab, axis=(1, 2), keepdims=True)
        sd = ops.std(lab, axis=(1, 2), keepdims=True)
        t = _const(self.target)
        return lab_to_rgb((lab - mean) / ops.maximum(sd, 1e-3) * t[3:] + t[:3])

    def get_config(self):
        return {**super().get_config(), "target": self.target}


@keras.saving.register_keras_serializable(package="bloodcells")
class RandomStainColour(keras.layers.Layer):
    """Training-time stain and colour jitter of 0..255 RGB images, per image: HED optical
    densities scaled by U(1-s, 1+s) and shifted by 0.3 U(-s, s) per stain, then contrast
    U(1-s, 1+s) about the image mean and brightness 64 U(-s, s) grey levels. Identity
    at inference. Seeded: the same seed gives the same draws in the same order."""

    def __init__(self, strength: float = 0.2, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0 < strength < 1:
            raise ValueError(f"strength must be in (0, 1); got {strength!r}.")
        self.strength, self.seed = float(strength), int(seed)
        self.generator = keras.random.SeedGenerator(self.seed)

    def call(self, x, training=None):
        x = ops.cast(x, "float32")
        if not training:
            return x
        s, n = self.strength, ops.shape(x)[0]

        def draw(low, high):
            return keras.random.uniform((n, 1, 1, 3), low, high, seed=self.generator)

        od = -ops.log(ops.maximum(x / 255.0, 1.0 / 255.0))
        hed = ops.matmul(od, _const(HED_FROM_RGB))
        hed = hed * draw(1 - s, 1 + s) + 0.3 * draw(-s, s)
        x = ops.exp(-ops.matmul(hed, _const(RGB_FROM_HED))) * 255.0
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        contrast, bright = draw(1 - s, 1 + s)[..., :1], draw(-s, s)[..., :1] * 64.0
        return ops.clip((x - mean) * contrast + mean + bright, 0.0, 255.0)

    def get_config(self):
        return {**super().get_config(), "strength": self.strength, "seed": self.seed}
