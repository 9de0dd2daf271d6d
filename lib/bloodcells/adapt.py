"""``bloodcells-adapt``: adapt an exported model to another laboratory's images.

Two remedies that need no retraining of the study's models (issue 18, part 3):

- **AdaBN** (Li et al., 2016): every BatchNormalization layer's moving mean and variance
  are replaced by the statistics of the target images, unlabelled. A stain or scanner
  shifts the activations' means and scales; this re-centres them.
- **Few-shot adaptation**: AdaBN on a small labelled folder of the lab's own cells (tens of
  images per class), then the classifier layer (``probs``) retrained on the features of
  those images' eight dihedral views (turns and mirrors, the training augmentation),
  everything before it frozen; or, with ``fine_tune_epochs``, the whole network trained
  on those views instead. It is what a lab can do in minutes on a CPU (decision 028).

:func:`benchmark` measures both on the shift benchmark (``13_generalisation``): the
adaptation images are shifted *validation* images, the scores are on the shifted *test*
images, so the test split still only reports. The command writes an adapted copy of an
exported model that ``bloodcells-predict`` and ``bloodcells-evaluate`` read like any other.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

#: the adaptation settings of the shift benchmark and the command (params
#: ``generalisation.adapt``): labelled images per class, unlabelled images for AdaBN,
#: epochs and learning rate of the classifier layer
DEFAULTS = {
    "per_class": 10,
    "unlabelled": 200,
    "epochs": 30,
    "learning_rate": 0.001,
    # the support images' dihedral views the adaptation learns from (1: the images as they
    # are; 8: every turn and mirror, +1.9 points on validation under shift, decision 028)
    "views": 8,
    # 0: the classifier layer only; else the whole network, this many epochs over the views
    "fine_tune_epochs": 0,
    "fine_tune_learning_rate": 0.0001,
    "shifts": None,  # the benchmark's shifts to adapt to; None: all of them
    "seeds": [0],  # draws of the adaptation images (their spread is the seed spread)
}


def _layers(model) -> list:
    """Every layer of ``model``, nested models' layers in place, in call order (a model's
    ``layers`` are in topological order)."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out += _layers(layer)
    return out


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included, in call order."""
    import keras

    return [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def adapt_batchnorm(model, x: np.ndarray, batch_size: int = 128) -> int:
    """AdaBN: set every BatchNormalization layer's moving statistics to those of ``x``
    (uint8 images), in place; returns how many layers changed.

    One pass in training mode, so each layer normalises with the statistics of the target
    batch and updates its moving averages; the momentum of batch ``k`` is the share of
    images seen before it, which makes the moving values the image-weighted mean of the
    batches' statistics (one batch: exactly that batch's). Dropout is off during the pass
    and frozen layers are unfrozen for it; both are restored."""
    import keras
    import tensorflow as tf

    from bloodcells.inference import feed

    if not len(x):
        raise ValueError("AdaBN needs at least one target image.")
    bns = batchnorm_layers(model)
    drops = [layer for layer in _layers(model) if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer, layer.momentum, layer.trainable) for layer in bns]
    rates = [(layer, layer.rate) for layer in drops]
    try:
        for layer in bns:
            layer.trainable = True
        for layer in drops:
            layer.rate = 0.0
        seen = 0
        for start in range(0, len(x), batch_size):
            batch = np.asarray(x[start : start + batch_size])
            for layer in bns:
                layer.momentum = seen / (seen + len(batch))
            model(feed(model, tf.convert_to_tensor(batch)), training=True)
            seen += len(batch)
    finally:
        for layer, momentum, trainable in saved:
            layer.momentum, layer.trainable = momentum, trainable
        for layer, rate in rates:
            layer.rate = rate
    return len(bns)


def features(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """What the classifier layer ``probs`` reads, for uint8 images (inference mode)."""
    import keras
    import tensorflow as tf

    from bloodcells.inference import feed

    extractor = keras.Model(model.inputs, model.get_layer("probs").input)
    out = [
        np.asarray(
            extractor(feed(extractor, tf.convert_to_tensor(np.asarray(x[i : i + batch_size]))))
        )
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out)


def softmax_regression(
    feats: np.ndarray,
    y: np.ndarray,
    weights: tuple[np.ndarray, np.ndarray],
    epochs: int,
    learning_rate: float,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """A softmax layer's kernel and bias trained from ``weights`` on features ``feats`` and
    labels ``y``: cross-entropy, Adam with Keras's defaults and update rule (beta 0.9 and
    0.999, epsilon 1e-7), shuffled mini-batches of ``batch_size`` for ``epochs`` epochs,
    the order drawn from ``seed``. In NumPy: on features computed once the layer is a
    softmax regression, and ``keras.Model.fit`` added only its overhead (2.9 s for the
    benchmark's 80 images, against milliseconds here)."""
    f = np.asarray(feats, dtype=np.float64)
    params = [np.array(w, dtype=np.float64) for w in weights]
    moments = [(np.zeros_like(w), np.zeros_like(w)) for w in params]
    rng, step = np.random.default_rng(seed), 0
    for _ in range(epochs):
        order = rng.permutation(len(f))
        for start in range(0, len(f), batch_size):
            rows = order[start : start + batch_size]
            logits = f[rows] @ params[0] + params[1]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(rows)), y[rows]] -= 1.0  # d(mean cross-entropy)/d(logits) * n
            grads = (f[rows].T @ p / len(rows), p.mean(axis=0))
            step += 1
            rate = learning_rate * np.sqrt(1 - 0.999**step) / (1 - 0.9**step)
            for w, g, (m, v) in zip(params, grads, moments, strict=True):
                m += (g - m) * 0.1
                v += (g * g - v) * 0.001
                w -= rate * m / (np.sqrt(v) + 1e-7)
    return params[0], params[1]


def fit_classifier(
    model, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float, seed: int = 0
) -> None:
    """Retrain ``model``'s classifier layer (``probs``, a softmax layer) on labelled images
    ``x``, ``y``, in place, from its current weights (:func:`softmax_regression`); every
    earlier layer frozen (their outputs are computed once). Deterministic given ``seed``."""
    probs = model.get_layer("probs")
    activation = probs.get_config().get("activation")
    if activation != "softmax":
        raise ValueError(
            f"The classifier layer 'probs' has activation {activation!r}; few-shot "
            "adaptation retrains a softmax layer. Export the model with the study's code "
            "(a softmax 'probs' layer)."
        )
    kernel, bias = probs.get_weights()
    trained = softmax_regression(features(model, x), np.asarray(y), (kernel, bias), epochs,
                                 learning_rate, seed)  # fmt: skip
    probs.set_weights([trained[0].astype(kernel.dtype), trained[1].astype(bias.dtype)])


def dihedral_views(x: np.ndarray, y: np.ndarray, views: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``views`` dihedral views (:func:`bloodcells.champion.dihedral`) of the
    images ``x``, stacked view after view, and their labels."""
    from bloodcells.champion import dihedral

    x = np.asarray(x)
    return np.concatenate([dihedral(x, v) for v in range(views)]), np.tile(np.asarray(y), views)


def fine_tune(
    model, x: np.ndarray, y: np.ndarray, epochs: int, learning_rate: float, seed: int = 0
) -> None:
    """Train ``model`` end to end on labelled images ``x``, ``y``, in place: Adam at
    ``learning_rate``, cross-entropy, shuffled batches of 32, ``epochs`` epochs, seeded.
    The layers the model was exported with frozen stay frozen. Seeded throughout: the
    batches' order, and every random layer's generator (dropout's was seeded when the model
    was loaded, from whatever the process had drawn before)."""
    import keras
    import tensorflow as tf

    from bloodcells.inference import feed

    keras.utils.set_random_seed(seed)
    generators = [
        g
        for layer in _layers(model)
        for g in vars(layer).values()
        if isinstance(g, keras.random.SeedGenerator)
    ]
    for i, generator in enumerate(generators):
        generator.state.assign(np.array([seed, i], dtype=generator.state.dtype))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy"
    )
    model.fit(
        feed(model, tf.convert_to_tensor(np.asarray(x))), np.asarray(y), epochs=epochs,
        batch_size=32, shuffle=True, verbose=0,
    )  # fmt: skip


def few_shot(
    model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    learning_rate: float,
    seed: int = 0,
    views: int = 1,
    fine_tune_epochs: int = 0,
    fine_tune_learning_rate: float = DEFAULTS["fine_tune_learning_rate"],
) -> None:
    """Few-shot adaptation in place: AdaBN on ``x``, then, on the first ``views`` dihedral
    views of ``x``, ``y``, either the classifier layer retrained (:func:`fit_classifier`,
    ``epochs`` at ``learning_rate``) or, when ``fine_tune_epochs`` is set, the whole network
    (:func:`fine_tune`, those epochs at ``fine_tune_learning_rate``), then AdaBN again:
    training moves the BatchNorm inputs, and its moving averages lag behind them."""
    adapt_batchnorm(model, x)
    xv, yv = dihedral_views(x, y, views)
    if fine_tune_epochs:
        fine_tune(model, xv, yv, fine_tune_epochs, fine_tune_learning_rate, seed)
        adapt_batchnorm(model, x)  # the statistics of the network as it now is
    else:
        fit_classifier(model, xv, yv, epochs, learning_rate, seed)


#: the settings of :func:`few_shot` beyond the classifier layer's epochs and learning rate
FEW_SHOT_OPTIONS = ("views", "fine_tune_epochs", "fine_tune_learning_rate")


def how_few_shot(settings: dict) -> dict:
    """The keyword arguments of :func:`few_shot` beyond the head's, from ``settings``."""
    return {k: settings[k] for k in FEW_SHOT_OPTIONS}


def describe(settings: dict) -> str:
    """What few-shot adaptation with ``settings`` trains, in words."""
    views = "its 8 dihedral views" if settings["views"] == 8 else f"{settings['views']} view(s)"
    if settings["fine_tune_epochs"]:
        return (
            f"the whole network fine-tuned for {settings['fine_tune_epochs']} epochs on "
            f"{views} of each image (Adam {settings['fine_tune_learning_rate']:g})"
        )
    return (
        f"the classifier layer retrained on {views} of each image "
        f"({settings['epochs']} epochs, Adam {settings['learning_rate']:g})"
    )


def per_class(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``k`` images of each class in ``y`` (seeded), sorted."""
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(y == c), size=min(k, int((y == c).sum())), replace=False)
        for c in np.unique(y)
    ]
    return np.sort(np.concatenate(picks))


def params_key(key: str) -> str:
    """How :func:`check_settings` names a setting by default: its params key."""
    return f"Params key 'generalisation.adapt.{key}'"


def check_settings(section: dict | None, name: Callable[[str], str] = params_key) -> dict:
    """``generalisation.adapt`` with its defaults filled in; errors name the setting as
    ``name(key)`` says (by default its params key)."""
    from bloodcells.config import ParamsError

    out = DEFAULTS | (section or {})
    unknown = set(out) - set(DEFAULTS)
    if unknown:
        raise ParamsError(
            f"Params key 'generalisation.adapt' has unknown keys {sorted(unknown)}; "
            f"known: {sorted(DEFAULTS)}."
        )
    for key, low, high in (
        ("per_class", 1, None), ("unlabelled", 1, None), ("epochs", 1, None),
        ("views", 1, 8), ("fine_tune_epochs", 0, None),
    ):  # fmt: skip
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < low or (high and v > high):
            raise ParamsError(
                f"{name(key)} must be an integer from {low}"
                f"{f' to {high}' if high else ' up'}; got {v!r}."
            )
    from bloodcells.shift import SHIFTS

    if out["shifts"] is not None and (
        not isinstance(out["shifts"], list) or not set(out["shifts"]) <= set(SHIFTS)
    ):
        raise ParamsError(
            f"{name('shifts')} must be null (all) or a list of "
            f"{list(SHIFTS)}; got {out['shifts']!r}."
        )
    seeds = out["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ParamsError(f"{name('seeds')} must be a list of distinct integers; got {seeds!r}.")
    for key in ("learning_rate", "fine_tune_learning_rate"):
        lr = out[key]
        if not isinstance(lr, int | float) or isinstance(lr, bool) or not 0 < lr < 1:
            raise ParamsError(f"{name(key)} must be in (0, 1); got {lr!r}.")
    return out


def benchmark(
    model,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    settings: dict,
    severities: tuple[int, ...],
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy and balanced accuracy of ``model`` on the test images (clean, and under
    each of ``settings["shifts"]`` at every severity; the shifts drawn with ``seed``) as it
    is, after AdaBN on ``settings["unlabelled"]`` shifted validation images, and after
    few-shot adaptation on ``settings["per_class"]`` labelled shifted validation images
    per class, the adaptation images drawn once per seed of ``settings["seeds"]`` (column
    ``seed``; none for the model as it is). The model is restored after each case."""
    from sklearn.metrics import balanced_accuracy_score

    from bloodcells import shift
    from bloodcells.inference import predict_proba

    (xv, yv), (xt, yt) = val, test
    draws = {
        s: (
            np.sort(
                np.random.default_rng(s).choice(
                    len(xv), min(settings["unlabelled"], len(xv)), replace=False
                )
            ),
            per_class(yv, settings["per_class"], s),
        )
        for s in settings["seeds"]
    }
    original = model.get_weights()
    shifts = settings["shifts"] or list(shift.SHIFTS)
    cases = [("none", 0)] + [(s, v) for s in shifts for v in severities]

    def shifted(x: np.ndarray, name: str, sev: int, salt: int) -> np.ndarray:
        return np.asarray(x) if name == "none" else shift.apply(np.asarray(x), name, sev, salt)

    rows = []
    for name, sev in cases:
        xt_s = shifted(xt, name, sev, seed)
        runs = [("none", None)] + [(m, s) for s in draws for m in ("adabn", "few-shot")]
        for method, draw in runs:
            model.set_weights(original)
            if method == "adabn":
                adapt_batchnorm(model, shifted(xv[draws[draw][0]], name, sev, seed + 1))
            elif method == "few-shot":
                support = draws[draw][1]
                few_shot(
                    model, shifted(xv[support], name, sev, seed + 2), yv[support],
                    settings["epochs"], settings["learning_rate"], draw, **how_few_shot(settings),
                )  # fmt: skip
            pred = predict_proba(model, xt_s)[0].argmax(1)
            rows.append(
                {
                    "shift": name,
                    "severity": sev,
                    "method": method,
                    "seed": draw,
                    "accuracy": float((pred == yt).mean()),
                    "balanced_accuracy": float(balanced_accuracy_score(yt, pred)),
                }
            )
    model.set_weights(original)
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, averaged over the draws of adaptation images: clean accuracy, mean
    accuracy under shift (every shift and severity) and its standard deviation over the
    draws (0 for the model as it is: nothing drawn), and the worst shifted case."""
    rows = {}
    for method, part in table.groupby("method", sort=False):
        per_draw = [
            draw[draw["shift"] != "none"]["accuracy"].mean()
            for _, draw in part.groupby(part["seed"].fillna(-1))
        ]
        cases = part.groupby(["shift", "severity"], sort=False)[
            ["accuracy", "balanced_accuracy"]
        ].mean()
        shifted = cases.drop(index="none", level="shift")
        worst = shifted["accuracy"].idxmin()
        rows[method] = {
            "clean accuracy": float(cases.loc[("none", 0), "accuracy"]),
            "mean accuracy under shift": float(shifted["accuracy"].mean()),
            "sd over draws": float(np.std(per_draw, ddof=1)) if len(per_draw) > 1 else 0.0,
            "mean balanced accuracy under shift": float(shifted["balanced_accuracy"].mean()),
            "worst case": f"{worst[0]} {int(worst[1])}",
            "worst accuracy": float(shifted.loc[worst, "accuracy"]),
        }
    return pd.DataFrame(rows).T.rename_axis("method")


def conclusion(table: pd.DataFrame, model: str, settings: dict) -> str:
    """A short conclusion (markdown) from :func:`summary`'s numbers."""
    s = summary(table)
    base = s.loc["none"]

    def pts(method: str, col: str) -> str:
        d = 100 * (float(s.loc[method, col]) - float(base[col]))
        return f"{d:+.2f} points"

    def sd(method: str) -> str:
        return f" (sd {100 * float(s.loc[method, 'sd over draws']):.2f} over the draws)"

    n = len(settings["seeds"])
    spread = (
        f"Averaged over {n} draws of the adaptation images."
        if n > 1
        else "One draw of the adaptation images: no seed spread measured."
    )
    return (
        f"Under shift, **{model}** averages {100 * base['mean accuracy under shift']:.2f}% as "
        f"exported; AdaBN on {settings['unlabelled']} unlabelled shifted validation images "
        f"changes that by {pts('adabn', 'mean accuracy under shift')}"
        f"{sd('adabn') if n > 1 else ''}, few-shot adaptation on "
        f"{settings['per_class']} labelled images per class ({describe(settings)}) by "
        f"{pts('few-shot', 'mean accuracy under shift')}{sd('few-shot') if n > 1 else ''}. "
        f"In-domain (clean test images, adapting on clean validation images): AdaBN "
        f"{pts('adabn', 'clean accuracy')}, few-shot {pts('few-shot', 'clean accuracy')}. "
        f"{spread} The test subset's sampling error is in the benchmark's table above."
    )


def save_adapted(model, metadata: dict, how: dict, dest: Path) -> Path:
    """Write ``model`` as an exported model at ``dest``: the original's metadata, plus
    ``adapted`` (what was done, on what). The out-of-distribution detector is kept as it
    was: it still describes the study's training images."""
    from bloodcells.export import METADATA
    from bloodcells.models import save_for_inference, stable_archive

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.keras")
    save_for_inference(model, tmp)
    stable_archive(tmp, {METADATA: json.dumps(metadata | {"adapted": how}, indent=2).encode()})
    tmp.replace(dest)
    return dest


def command_settings(args: argparse.Namespace) -> dict:
    """The command's options as :func:`check_settings` settings; an error names the option."""
    given = {k: getattr(args, k) for k in ("epochs", "learning_rate", *FEW_SHOT_OPTIONS)}
    return check_settings(given, name=lambda key: "--" + key.replace("_", "-"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bloodcells-adapt",
        description=(
            "Adapt an exported model to your laboratory's images: few-shot on a folder laid "
            "out as <class>/<image> (tens of images per class), or AdaBN only on a folder of "
            "unlabelled images (--unlabelled)."
        ),
    )
    parser.add_argument("model", type=Path, help="an exported model (export/best.keras)")
    parser.add_argument("folder", type=Path, help="your images: <class>/<image>, or any")
    parser.add_argument("--out", type=Path, required=True, help="where to write the model")
    parser.add_argument(
        "--unlabelled", action="store_true", help="AdaBN only; the folder needs no classes"
    )
    parser.add_argument(
        "--per-class", type=int, help="use at most this many images of each class (seeded)"
    )
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    parser.add_argument(
        "--views", type=int, default=DEFAULTS["views"], help="dihedral views per image (1-8)"
    )
    parser.add_argument(
        "--fine-tune-epochs", type=int, default=DEFAULTS["fine_tune_epochs"],
        help="train the whole network this many epochs instead of the classifier layer only",
    )  # fmt: skip
    parser.add_argument(
        "--fine-tune-learning-rate", type=float, default=DEFAULTS["fine_tune_learning_rate"]
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from bloodcells.console import native_logs_held
    from bloodcells.export import NotAModelError, load_exported
    from bloodcells.external import labelled_files
    from bloodcells.predict import EXTENSIONS, load_images

    try:
        settings = command_settings(args)
        if args.out.resolve() == args.model.resolve():
            raise ValueError(f"--out {args.out} is the model itself; write the adapted copy "
                             "elsewhere (the original stays as it was).")  # fmt: skip
        with native_logs_held():
            model, metadata = load_exported(args.model)
        size = int(metadata["input_size"])
        if args.unlabelled:
            if not args.folder.is_dir():
                raise FileNotFoundError(f"{args.folder}: no such folder.")
            files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
            labels = None
        else:
            files, labels, _ = labelled_files(args.folder)
            if args.per_class:
                chosen = per_class(labels, args.per_class, args.seed)
                files, labels = [files[i] for i in chosen], labels[chosen]
        x, kept, errors = load_images(files, size)
        if not len(x):
            raise ValueError(f"{args.folder}: none of its {len(files)} image(s) could be read.")
        with native_logs_held():
            if labels is None:
                layers = adapt_batchnorm(model, x)
                how = {"method": "adabn", "images": len(x), "batchnorm_layers": layers}
            else:
                y = labels[kept]
                few_shot(model, x, y, args.epochs, args.learning_rate, args.seed,
                         **how_few_shot(settings))  # fmt: skip
                counts = {metadata["classes"][c]: int((y == c).sum()) for c in np.unique(y)}
                how = {"method": "few-shot", "images_per_class": counts,
                       "epochs": args.epochs, "learning_rate": args.learning_rate,
                       **how_few_shot(settings), "trained": describe(settings)}  # fmt: skip
            how |= {"folder": str(args.folder), "seed": args.seed, "unreadable": errors}
            save_adapted(model, metadata, how, args.out)
    except (NotAModelError, FileNotFoundError, ValueError) as exc:
        print(f"bloodcells-adapt: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {how['method']} on {len(x)} image(s) from {args.folder}")
    if errors:
        print(f"  {len(errors)} file(s) could not be read (listed in the model's metadata)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
