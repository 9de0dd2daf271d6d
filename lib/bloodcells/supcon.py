"""Supervised contrastive learning (Khosla et al., NeurIPS 2020), written for Keras 3.

Stage one trains an encoder and an L2-normalised projection head with the supervised
contrastive loss on two augmented views of every image in a batch; stage two freezes the
encoder and trains a classifier on it with cross-entropy.

The loss is the paper's ``L_out`` form (eq. 2): for each anchor ``i`` among the 2N views,

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t) )

where ``P(i)`` are the other views with the same label, the sum over positives standing
outside the log. The keras-io example uses TensorFlow Addons' npairs loss on one view: a
different loss, not used here.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from bloodcells.inputs import two_view_dataset
from bloodcells.models import ModelConfigError, Preprocess, build_backbone, get_family


@keras.saving.register_keras_serializable(package="bloodcells")
class SupConLoss(keras.losses.Loss):
    """Supervised contrastive loss; ``y_true`` are integer labels, ``y_pred`` embeddings.

    Embeddings are L2-normalised inside, so the loss does not depend on their scale.
    Anchors without any positive in the batch are left out of the mean.
    """

    def __init__(self, temperature: float = 0.1, name: str = "supcon", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def call(self, y_true, y_pred):
        z = ops.normalize(ops.cast(y_pred, "float32"), axis=-1)
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        n = ops.shape(z)[0]
        logits = ops.matmul(z, ops.transpose(z)) / self.temperature
        not_self = 1.0 - ops.eye(n)
        # numerically stable log-softmax over a != i
        logits = logits - ops.max(logits - 1e9 * (1.0 - not_self), axis=1, keepdims=True)
        exp = ops.exp(logits) * not_self
        log_prob = logits - ops.log(ops.sum(exp, axis=1, keepdims=True))
        positives = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32") * not_self
        n_pos = ops.sum(positives, axis=1)
        mean_log_prob_pos = ops.sum(positives * log_prob, axis=1) / ops.maximum(n_pos, 1.0)
        has_pos = ops.cast(n_pos > 0, "float32")
        return -ops.sum(mean_log_prob_pos * has_pos) / ops.maximum(ops.sum(has_pos), 1.0)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def supcon_reference(labels: np.ndarray, embeddings: np.ndarray, temperature: float) -> float:
    """A plain NumPy transcription of eq. 2, loop by loop, for testing."""
    z = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    n = len(z)
    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(np.exp(z[i] @ z[a] / temperature) for a in range(n) if a != i)
        losses.append(
            -np.mean([np.log(np.exp(z[i] @ z[p] / temperature) / denom) for p in positives])
        )
    return float(np.mean(losses))


def build_encoder(
    family: str,
    image_size: int,
    weights: str = "none",
    conv_widths: Sequence[int] | None = None,
) -> keras.Model:
    """Pixels -> a pooled feature vector, with the family's own input scaling."""
    fam = get_family(family)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = Preprocess(fam.preprocess, name="preprocess")(inputs)
    x = build_backbone(fam, image_size, weights, conv_widths)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, x, name=f"{family}_encoder")


def with_projection_head(encoder: keras.Model, projection_units: int = 128) -> keras.Model:
    """Encoder plus an MLP projection head whose output is L2-normalised."""
    x = layers.Dense(encoder.output_shape[-1], activation="relu", name="proj_hidden")(
        encoder.output
    )
    x = layers.Dense(projection_units, name="proj_out")(x)
    x = layers.UnitNormalization(name="proj_norm")(x)
    return keras.Model(encoder.input, x, name="supcon_projection")


def classifier_on(encoder: keras.Model, n_classes: int, trainable: bool, dropout: float = 0.5):
    """A softmax classifier on ``encoder``; the encoder frozen unless ``trainable``."""
    encoder.trainable = trainable
    x = layers.Dropout(dropout, name="head_dropout")(encoder.output)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(encoder.input, outputs, name="supcon_classifier")


def embed(encoder: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Encoder features of uint8 images, batch by batch."""
    return np.concatenate(
        [
            np.asarray(encoder(np.asarray(x[i : i + batch_size]), training=False))
            for i in range(0, len(x), batch_size)
        ]
    )


KEY = "supcon"
CONTROL = "supcon_ce_control"


def refuse_classifier_only_settings(cfg) -> None:
    """SupCon's encoder is the plain CNN: the classifier's BatchNorm options, whitening stem
    and progressive resizing (``models.CnnOptions``, ``progressive_from``) are refused,
    naming the key, rather than ignored."""
    changed = cfg.changed_cnn_options(progressive=True)
    if changed:
        raise ModelConfigError(
            f"Params key 'models.{KEY}.{changed[0]}' (or 'train.{changed[0]}') applies to the "
            "cnn classifier only; SupCon's encoder does not use it. Remove the key."
        )


def train_supcon(
    params: dict,
    root=None,
    verbose: int = 2,
    key: str = KEY,
    variants: tuple[str, str] = (KEY, CONTROL),
    **overrides,
) -> list[str]:
    """Stage 11's training: SupCon pre-training and a classifier on the frozen encoder
    (variant ``supcon``), and the cross-entropy control (``supcon_ce_control``): the same
    encoder and head trained end to end for as many epochs as the pre-training ran. Each
    saves its test-split embeddings beside its model. Runs trained before under the same
    key are kept. The runs are ``models/<key>/<variants>/`` (stage 11's by default; the
    seed spread's under another seed); ``overrides`` (``seed``, ``epochs``: the
    pre-training's and the control's) replace ``models.supcon``'s. Returns the variants."""
    import dataclasses

    from bloodcells.experiment import ensure_run
    from bloodcells.paths import project_root
    from bloodcells.train import (
        completed_epochs,
        configure_tensorflow,
        distribution_strategy,
        family_config,
        fit_resumable,
        make_optimizer,
        train_model,
    )

    root = root or project_root()
    entry = params["models"][KEY]
    cfg = family_config(params, KEY, **overrides)
    refuse_classifier_only_settings(cfg)
    cfg2 = dataclasses.replace(cfg, epochs=int(entry["classifier_epochs"]))
    total = dataclasses.replace(cfg, epochs=cfg.epochs + cfg2.epochs)

    def save_embeddings(dirs: dict, encoder, data: dict) -> None:
        dirs["out"].mkdir(parents=True, exist_ok=True)
        test = embed(encoder, data["test"][0])
        np.savez_compressed(dirs["out"] / "embeddings.npz", test=test)

    def pretrain_and_probe(dirs: dict, data: dict):
        (x_tr, y_tr), (x_val, y_val) = data["train"], data["val"]
        # Stage one: encoder + projection head, supervised contrastive loss.
        configure_tensorflow(cfg)
        steps = cfg.epochs * (len(x_tr) // cfg.batch_size)
        # Under a mirrored strategy each replica contrasts its own share of the batch.
        with distribution_strategy().scope():
            encoder = build_encoder(cfg.family, cfg.image_size, cfg.weights, cfg.conv_widths)
            projector = with_projection_head(encoder, int(entry["projection_units"]))
            projector.compile(
                optimizer=make_optimizer(
                    cfg.optimizer, cfg.learning_rate, steps, cfg.warmup_fraction, cfg.ema_momentum
                ),
                loss=SupConLoss(float(entry["temperature"])),
                run_eagerly=cfg.run_eagerly,
            )
        pre_done = completed_epochs(dirs["work"] / "pretrain")
        projector, pre_history, pre_seconds = fit_resumable(
            projector,
            two_view_dataset(x_tr, y_tr, cfg.batch_size, cfg.seed, cfg.epochs, pre_done),
            two_view_dataset(x_val, y_val, cfg.batch_size, cfg.seed + 1, full_batches=False),
            cfg.epochs,
            dirs["work"] / "pretrain",
            dirs["live"] / "pretrain",
            monitor="val_loss",
            mode="min",
            verbose=verbose,
            steps=len(x_tr) // cfg.batch_size,
            seed=cfg.seed,
        )
        with distribution_strategy().scope():
            encoder = keras.Model(
                projector.input, projector.get_layer("gap").output, name="encoder"
            )
            classifier = classifier_on(encoder, 8, trainable=False, dropout=cfg.dropout)
        # Stage two: a classifier on the frozen encoder.
        head = train_model(
            cfg2,
            x_tr,
            y_tr,
            x_val,
            y_val,
            dirs["work"] / "classifier",
            dirs["live"] / "classifier",
            model=classifier,
            verbose=verbose,
        )
        save_embeddings(dirs, encoder, data)
        extra = {
            "encoder": cfg.family,
            "temperature": float(entry["temperature"]),
            "pretrain_epochs": cfg.epochs,
            "classifier_epochs": cfg2.epochs,
            "pretrain_history": pre_history.reset_index().to_dict("list"),
        }
        return dataclasses.replace(head, seconds=pre_seconds + head.seconds), extra

    def control(dirs: dict, data: dict):
        (x_tr, y_tr), (x_val, y_val) = data["train"], data["val"]
        with distribution_strategy().scope():
            control_encoder = build_encoder(
                cfg.family, cfg.image_size, cfg.weights, cfg.conv_widths
            )
            control_model = classifier_on(control_encoder, 8, trainable=True, dropout=cfg.dropout)
        result = train_model(
            cfg,
            x_tr,
            y_tr,
            x_val,
            y_val,
            dirs["work"],
            dirs["live"],
            model=control_model,
            verbose=verbose,
        )
        features = keras.Model(
            result.model.input, result.model.get_layer("gap").output, name="control_encoder"
        )
        save_embeddings(dirs, features, data)
        return result, {"encoder": cfg.family}

    recipe = {
        "temperature": float(entry["temperature"]),
        "projection_units": int(entry["projection_units"]),
        "classifier_epochs": cfg2.epochs,
    }
    ensure_run(key, variants[0], total, pretrain_and_probe, root, verbose, **recipe)
    ensure_run(key, variants[1], cfg, control, root, verbose, control=True)
    return list(variants)


def run_supcon(params: dict, root=None, verbose: int = 2) -> dict:
    """Stage 11: the SupCon model and its cross-entropy control, trained if needed
    (:func:`train_supcon`) and scored on the test split, with their test embeddings.

    Returns ``{"supcon": record, "control": record, "embeddings": {...}}``.
    """
    from bloodcells.experiment import evaluate_run, read_run
    from bloodcells.paths import project_root

    root = root or project_root()
    train_supcon(params, root, verbose)
    records, embeddings = {}, {}
    for name, variant in (("supcon", KEY), ("control", CONTROL)):
        records[name] = evaluate_run(params, read_run(KEY, variant, root), root)
        with np.load(root / "models" / KEY / variant / "embeddings.npz") as z:
            embeddings[name] = z["test"]
    return {**records, "embeddings": embeddings}


def embedding_2d(features: np.ndarray, labels: np.ndarray, n: int = 2000, seed: int = 0):
    """t-SNE of a stratified subsample (PCA to 50 dimensions first); returns (xy, labels)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(features))[: min(n, len(features))])
    feats = features[idx]
    dims = min(50, feats.shape[1], len(feats))
    reduced = PCA(dims, random_state=seed).fit_transform(feats)
    perplexity = float(min(30, max(2, (len(feats) - 1) // 3)))
    xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    return xy, labels[idx]
