"""The shift benchmark (stage 13): the test images under named, controlled shifts.

Each shift imitates one way another laboratory's images differ from PBC's (one analyser,
one hospital, one staining protocol): stain and colour, brightness and contrast, focus,
sensor noise, compression, magnification and background. Every shift takes a batch of
uint8 RGB images and a severity (1 mild .. 3 strong) and is deterministic given its seed.
Parameters scale with the image size where they are spatial (blur radius, zoom), so a
severity means the same at 32 px as at 96 px. ``benchmark`` scores models on every shift
and severity; ``summary`` gives one number per model (mean accuracy under shift, as
ImageNet-C's corruption accuracy).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from bloodcells.config import ParamsError

SEVERITIES = (1, 2, 3)

#: Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB) as rows, RGB columns
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def _to_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def stain(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Another staining: each image's haematoxylin/eosin/DAB optical densities scaled and
    shifted at random (Tellez et al. 2019's HED jitter), sigma 0.1 per severity step."""
    sigma = 0.1 * severity
    od = -np.log(np.maximum(_to_float(x), 1 / 255.0))  # optical density
    hed = od @ HED_FROM_RGB
    n = len(x)
    scale = rng.uniform(1 - sigma, 1 + sigma, (n, 1, 1, 3))
    bias = rng.uniform(-sigma, sigma, (n, 1, 1, 3)) * 0.3
    out = np.exp(-((hed * scale + bias) @ RGB_FROM_HED))
    return _to_uint8(out)


def _hsv(x: np.ndarray) -> np.ndarray:
    from matplotlib.colors import rgb_to_hsv

    return rgb_to_hsv(_to_float(x))


def _rgb(hsv: np.ndarray) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb

    return _to_uint8(hsv_to_rgb(np.clip(hsv, 0, 1)))


def hue(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Hue turned by 0.04 per severity step (of the hue circle), either way at random."""
    hsv = _hsv(x)
    sign = rng.choice([-1.0, 1.0], (len(x), 1, 1))
    hsv[..., 0] = (hsv[..., 0] + sign * 0.04 * severity) % 1.0
    return _rgb(hsv)


def saturation(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Paler or stronger colours: saturation times 1 -/+ 0.25 per severity step."""
    hsv = _hsv(x)
    sign = rng.choice([-1.0, 1.0], (len(x), 1, 1))
    hsv[..., 1] = hsv[..., 1] * (1 + sign * 0.25 * severity)
    return _rgb(hsv)


def brightness_contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Illumination: brightness -/+ 0.08 and contrast times 1 -/+ 0.2 per severity step."""
    f = _to_float(x)
    n = len(x)
    shift = rng.choice([-1.0, 1.0], (n, 1, 1, 1)) * 0.08 * severity
    gain = 1 + rng.choice([-1.0, 1.0], (n, 1, 1, 1)) * 0.2 * severity
    mean = f.mean(axis=(1, 2, 3), keepdims=True)
    return _to_uint8((f - mean) * gain + mean + shift)


def defocus(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Out of focus: Gaussian blur of radius 0.5 px per severity step at 96 px (scaled)."""
    radius = 0.5 * severity * x.shape[1] / 96
    return np.stack(
        [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius))) for im in x]
    )


def noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise: Gaussian, sd 0.04 per severity step (of full scale)."""
    return _to_uint8(_to_float(x) + rng.normal(0, 0.04 * severity, x.shape))


def jpeg(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Re-compression: JPEG at quality 40, 20, 10."""
    quality = {1: 40, 2: 20, 3: 10}[severity]
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


def magnification(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Another objective or scanner resolution: zoom in (crop and enlarge) or out (shrink
    and pad with the image's border colour) by 15% per severity step, at random."""
    size = x.shape[1]
    out = []
    for im, zoom_in in zip(x, rng.random(len(x)) < 0.5, strict=True):
        factor = 1 + 0.15 * severity
        pil = Image.fromarray(im)
        if zoom_in:
            crop = max(2, round(size / factor))
            lo = (size - crop) // 2
            pil = pil.crop((lo, lo, lo + crop, lo + crop)).resize((size, size), Image.BILINEAR)
        else:
            small = max(2, round(size / factor))
            border = np.median(np.concatenate([im[0], im[-1], im[:, 0], im[:, -1]]), axis=0)
            canvas = Image.new("RGB", (size, size), tuple(int(v) for v in border))
            lo = (size - small) // 2
            canvas.paste(pil.resize((small, small), Image.BILINEAR), (lo, lo))
            pil = canvas
        out.append(np.asarray(pil))
    return np.stack(out)


def background(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Another background (plasma and red cells of another tint): pixels near the image's
    brightest quarter are blended towards a random tint, 25% per severity step."""
    f = _to_float(x)
    lum = f.mean(axis=3)
    threshold = np.quantile(lum.reshape(len(x), -1), 0.75, axis=1)[:, None, None]
    mask = (lum >= threshold)[..., None].astype(np.float32)
    tint = rng.uniform(0.4, 1.0, (len(x), 1, 1, 3))
    alpha = 0.25 * severity
    return _to_uint8(f * (1 - alpha * mask) + tint * alpha * mask)


#: every shift, by name, in the order the reports show them
SHIFTS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "stain (HED)": stain,
    "hue": hue,
    "saturation": saturation,
    "brightness/contrast": brightness_contrast,
    "defocus": defocus,
    "noise": noise,
    "jpeg": jpeg,
    "magnification": magnification,
    "background": background,
}


def apply(x: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``x`` under shift ``name`` at ``severity``; the same seed gives the same images."""
    if name not in SHIFTS:
        raise KeyError(f"Unknown shift {name!r}; known: {', '.join(SHIFTS)}.")
    if severity not in SEVERITIES:
        raise ValueError(f"Severity must be one of {SEVERITIES}; got {severity!r}.")
    index = list(SHIFTS).index(name)
    rng = np.random.default_rng([seed, index, severity])
    return SHIFTS[name](np.asarray(x, dtype=np.uint8), severity, rng)


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` rows (all when ``n`` is 0 or too large) with every class in its
    proportion, sorted."""
    if not n or n >= len(y):
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    return np.sort(keep)


def benchmark(
    predict: Callable[[str, np.ndarray], np.ndarray],
    models: dict[str, int],
    x_by_size: dict[int, np.ndarray],
    y: np.ndarray,
    shifts: list[str] | None = None,
    severities: tuple[int, ...] = SEVERITIES,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy and balanced accuracy of each model (name -> image size) on the clean images
    (``shift`` "none", severity 0) and under every shift and severity. ``predict(name, x)``
    returns class probabilities; ``x_by_size[size]`` holds the same images at each size."""
    from sklearn.metrics import balanced_accuracy_score

    shifts = list(shifts or SHIFTS)
    shifted = {
        (size, name, sev): apply(x, name, sev, seed)
        for size, x in x_by_size.items()
        for name in shifts
        for sev in severities
    }
    rows = []
    for model, size in models.items():
        cases = [("none", 0, x_by_size[size])] + [
            (name, sev, shifted[(size, name, sev)]) for name in shifts for sev in severities
        ]
        # one call per model: every case in one stack (a call per case costs an eager pass
        # of a large model per case)
        preds = np.split(
            predict(model, np.concatenate([c[2] for c in cases])).argmax(1), len(cases)
        )
        for (name, sev, _), pred in zip(cases, preds, strict=True):
            rows.append(
                {
                    "model": model,
                    "shift": name,
                    "severity": sev,
                    "accuracy": float((pred == y).mean()),
                    "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
                }
            )
    return pd.DataFrame(rows)


def flag_table(
    detector,
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    shifts: list[str] | None = None,
    severities: tuple[int, ...] = SEVERITIES,
    seed: int = 0,
) -> pd.DataFrame:
    """How an out-of-distribution detector (:class:`bloodcells.ood.Detector`) meets the
    shifts: per case (the clean images, then every shift and severity) the share of images
    it flags, and the accuracy on the images it lets through and on those it flags.
    ``predict(x)`` returns class probabilities; one call over every case."""
    shifts = list(shifts or SHIFTS)
    cases = [("none", 0, x)] + [
        (name, sev, apply(x, name, sev, seed)) for name in shifts for sev in severities
    ]
    stack = np.concatenate([c[2] for c in cases])
    probs = np.split(predict(stack), len(cases))
    rows = []
    for (name, sev, images), p in zip(cases, probs, strict=True):
        flagged = detector.flags(p, images)["flagged"]
        right = p.argmax(1) == y
        rows.append(
            {
                "shift": name,
                "severity": sev,
                "flagged": float(flagged.mean()),
                "accuracy of kept": float(right[~flagged].mean()) if (~flagged).any() else np.nan,
                "accuracy of flagged": float(right[flagged].mean()) if flagged.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per model: clean accuracy, mean accuracy and balanced accuracy under shift (every
    shift and severity), the drop, and the worst shift."""
    clean = table[table["shift"] == "none"].set_index("model")
    shifted = table[table["shift"] != "none"]
    per_shift = shifted.groupby(["model", "shift"])["accuracy"].mean()
    out = pd.DataFrame(
        {
            "clean accuracy": clean["accuracy"],
            "mean accuracy under shift": shifted.groupby("model")["accuracy"].mean(),
            "mean balanced accuracy under shift": shifted.groupby("model")[
                "balanced_accuracy"
            ].mean(),
        }
    )
    out["drop"] = out["clean accuracy"] - out["mean accuracy under shift"]
    out["worst shift"] = per_shift.groupby("model").idxmin().map(lambda t: t[1])
    return out.sort_values("mean accuracy under shift", ascending=False)


def check_params(section: dict) -> dict:
    """The ``generalisation`` params, checked; errors name the key and what to do."""
    n = section.get("test_images")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ParamsError(
            f"Params key 'generalisation.test_images' must be 0 (all) or a positive number "
            f"of test images; got {n!r}."
        )
    sev = section.get("severities")
    if not sev or not all(s in SEVERITIES for s in sev):
        raise ParamsError(
            f"Params key 'generalisation.severities' must list some of {list(SEVERITIES)}; "
            f"got {sev!r}."
        )
    within = section.get("export_within")
    if not isinstance(within, int | float) or isinstance(within, bool) or not 0 <= within < 1:
        raise ParamsError(
            f"Params key 'generalisation.export_within' must be a fraction of validation "
            f"accuracy in [0, 1) (0.003 = 0.3 points); got {within!r}."
        )
    ext = section.get("external")
    if not isinstance(ext, list) or not all(isinstance(e, str) for e in ext):
        raise ParamsError(
            "Params key 'generalisation.external' must be a list of folder paths "
            f"(<class>/<image> inside); got {ext!r}."
        )
    from bloodcells.adapt import check_settings

    return section | {"adapt": check_settings(section.get("adapt"))}


def conclusion(summary: pd.DataFrame, exported: str, n_images: int) -> str:
    """A short conclusion (markdown) from the benchmark's numbers."""
    best = summary.index[0]
    row = summary.loc[best]
    text = (
        f"On {n_images} test images, **{best}** holds its accuracy best under shift: "
        f"{100 * row['mean accuracy under shift']:.2f}% mean accuracy over every shift and "
        f"severity (clean {100 * row['clean accuracy']:.2f}%; worst shift: {row['worst shift']})."
    )
    if exported in summary.index:
        e = summary.loc[exported]
        text += (
            f" The exported model, **{exported}**, drops from {100 * e['clean accuracy']:.2f}% "
            f"clean to {100 * e['mean accuracy under shift']:.2f}% under shift (mean balanced "
            f"accuracy {100 * e['mean balanced accuracy under shift']:.2f}%); its worst shift "
            f"is {e['worst shift']}."
        )
    worst = summary["drop"].idxmax()
    text += (
        f" The largest drop is {worst}'s ({100 * summary.loc[worst, 'drop']:.2f} points). "
        "These are synthetic shifts of one lab's images: a lower bound on what another lab's "
        "slides can do, not a measurement of them."
    )
    return text
