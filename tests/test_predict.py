"""Export -> load -> predict, bad inputs, safe loading, the model card."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from bloodcells import experiment, export, ood, predict
from bloodcells.config import load_params
from tests.conftest import ROOT, mini_project


@pytest.fixture(scope="module")
def exported(tmp_path_factory, built, sample_dir):
    """A CNN trained for one epoch on the sample at 32 px, exported with its metadata."""
    manifest, _ = built
    root = mini_project(tmp_path_factory.mktemp("predict"), manifest, sample_dir)
    params = load_params(ROOT / "params.yaml", profile="smoke")
    record = experiment.run_variant(params, "cnn", root=root, verbose=0, epochs=1)
    data = experiment.load_splits(32, root)
    preds = experiment.load_predictions("cnn", "cnn", root)
    detector = ood.fit_detector(
        np.asarray(data["train"][0]), preds["val_probs"], preds["val_y"], data["val"][0], 0.05
    )
    path = export.export_model(
        record,
        root / "models/cnn/cnn/model.keras",
        root / "best.keras",
        images=106,
        ece_bins=10,
        ood=detector.to_json(),
    )
    test_files = [sample_dir / p for p in manifest.loc[manifest["split"] == "test", "path"]]
    probs = np.load(root / "models/cnn/cnn/predictions.npz")["test_probs"]
    return path, test_files, probs


def test_round_trip_matches_the_evaluation_predictions(exported):
    path, files, expected = exported
    model, meta = export.load_exported(path)
    assert meta["input_size"] == 32 and len(meta["classes"]) == 8
    got = dict(
        (p, pr) for p, pr, *_ in predict.predict_files(model, meta, files, 16, progress=False)
    )
    assert len(got) == len(files)
    np.testing.assert_allclose(np.stack([got[f] for f in files]), expected, rtol=1e-4, atol=1e-6)


def test_cli_writes_csv_and_json(exported, tmp_path, capsys):
    path, files, _ = exported
    code = predict.main(
        [
            str(path),
            str(files[0].parent),
            "--csv",
            str(tmp_path / "p.csv"),
            "--json",
            str(tmp_path / "p.json"),
        ]
    )
    assert code == 0
    out = capsys.readouterr()
    assert "images/s" in out.err
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0].startswith(
        "file,prediction,probability,unlike_training,why,calibrated_confidence,colour_distance,"
        "p_basophil"
    )
    data = json.loads((tmp_path / "p.json").read_text())
    probs = [sum(v for k, v in r.items() if k.startswith("p_")) for r in data["predictions"]]
    assert np.allclose(probs, 1, atol=1e-4)


def test_the_cli_flags_images_unlike_the_training_data_with_a_clean_console(exported, tmp_path):
    # a real process, as a user runs it: TensorFlow's native start-up lines and Keras
    # warnings would reach its stderr; the detector travels in the exported model
    path, files, _ = exported
    folder = tmp_path / "in"
    folder.mkdir()
    for f in files[:6]:
        (folder / f.name).write_bytes(f.read_bytes())
    Image.open(files[0]).convert("L").save(folder / "grey.tiff")  # no stain colours at all
    cli = Path(sys.executable).parent / "bloodcells-predict"
    done = subprocess.run(
        [str(cli), str(path), str(folder), "--json", str(tmp_path / "o.json"), "--csv",
         str(tmp_path / "o.csv")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for noise in ("absl", "oneDNN", "cuInit", "cuda", "Warning", "warn("):
        assert noise not in done.stderr + done.stdout, (noise, done.stderr)
    rows = {Path(r["file"]).name: r for r in json.loads((tmp_path / "o.json").read_text())[
        "predictions"]}  # fmt: skip
    assert rows["grey.tiff"]["unlike_training"] is True
    assert "unusual colours" in rows["grey.tiff"]["why"]
    assert "grey.tiff" in done.stdout and "UNLIKE TRAINING DATA" in done.stdout
    assert "flagged as unlike the training data" in done.stderr
    header = (tmp_path / "o.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["file", "prediction", "probability", "unlike_training", "why"]


def test_any_common_format_and_mode(exported, tmp_path):
    path, files, _ = exported
    src = Image.open(files[0])
    variants = {
        "rgba.png": src.convert("RGBA"),
        "grey.tiff": src.convert("L"),
        "palette.gif": src.convert("P"),
        "plain.bmp": src.convert("RGB"),
    }
    for name, im in variants.items():
        im.save(tmp_path / name)
    assert predict.main([str(path), str(tmp_path), "--quiet"]) == 0


def test_bad_inputs_are_skipped_with_a_clear_error(exported, tmp_path, capsys):
    path, files, _ = exported
    good = tmp_path / "good.jpg"
    good.write_bytes(files[0].read_bytes())
    (tmp_path / "truncated.jpg").write_bytes(files[1].read_bytes()[:3000])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    Image.new("L", (8000, 8000)).save(tmp_path / "bomb.png")  # 64 MP > the 50 MP limit
    missing = tmp_path / "missing.jpg"
    code = predict.main([str(path), str(tmp_path), str(missing), "--csv", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err
    assert code == 1
    for name, reason in [
        ("truncated.jpg", "truncated or corrupt"),
        ("empty.jpg", "not an image"),
        ("text.jpg", "not an image"),
        ("bomb.png", "decompression bomb"),
        ("missing.jpg", "no such file"),
    ]:
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1 and reason in lines[0], (name, err)
    rows = (tmp_path / "o.csv").read_text().splitlines()
    assert len(rows) == 2 and "good.jpg" in rows[1]  # the rest still classified


def test_a_file_that_is_not_a_model(tmp_path, capsys):
    text = tmp_path / "model.keras"
    text.write_text("not a model")
    assert predict.main([str(text), str(tmp_path)]) == 2
    assert "not a Keras model archive" in capsys.readouterr().err
    bare = tmp_path / "bare.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(bare)
    with pytest.raises(export.NotAModelError, match="without bloodcells.json"):
        export.read_metadata(bare)


def test_safe_mode_refuses_code_in_a_model(exported, tmp_path):
    path, _, _ = exported
    inputs = keras.Input((32, 32, 3))
    crafted = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    evil = tmp_path / "evil.keras"
    crafted.save(evil)
    with zipfile.ZipFile(path) as zf:
        meta = zf.read(export.METADATA)
    with zipfile.ZipFile(evil, "a") as zf:
        zf.writestr(export.METADATA, meta)
    with pytest.raises(export.NotAModelError, match="(?i)safe"):
        export.load_exported(evil)


def test_model_card(exported):
    path, _, _ = exported
    meta = export.read_metadata(path)
    card = export.model_card(meta)
    assert "Not for diagnosis" in card and "one laboratory" in card
    assert f"{100 * meta['metrics']['test_accuracy']:.2f}%" in card
    page = export.card_html(card)
    assert "`" in card and "|" in card  # the Markdown has code spans and a table ...
    text = re.sub(r"<[^>]+>", "", page.split("</style>", 1)[1])
    for syntax in ("`", "**", "| ---", "## "):  # ... which the page shows as HTML, not syntax
        assert syntax not in text, syntax
    assert "<code>" in page and page.count("<tr>") == 1 + len(meta["classes"])
    assert "<th>class</th>" in page and "border-collapse" in page  # styled like index.html
    # a paragraph wrapped over several source lines is one paragraph
    assert re.search(r"<p>[^<]*one laboratory[^<]*\nBarcelona", page)
    # what this run kept and how its ECE was binned, not the published dataset's constants
    assert "on 106 images of the PBC dataset" in card and "(10 bins)" in card
    assert "17,092" not in card and "15 bins" not in card


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("Neutrophil", "neutrophil"),
        ("NEUTROPHIL", "neutrophil"),
        ("neutrophils", "neutrophil"),
        ("SNE", "neutrophil"),
        ("Lymphocytes", "lymphocyte"),
        ("immature_granulocytes", "ig"),
        ("IG", "ig"),
        ("Thrombocytes", "platelet"),
        ("eos", "eosinophil"),
        ("NRBC", "erythroblast"),
        ("mono-cytes", None),
    ],
)
def test_external_class_names_map_onto_pbc(name, cls):
    from bloodcells import external

    if cls is None:
        with pytest.raises(ValueError, match=r"'mono-cytes' matches none.*neutrophil: neutrophil"):
            external.class_of(name)
    else:
        assert external.class_of(name) == cls


def _lab_folder(files, tmp_path):
    """A folder as another lab might send it: its own class names, formats and sizes."""
    spelling = {"neutrophil": "SNE", "lymphocyte": "Lymphocytes", "eosinophil": "EOSINOPHIL"}
    formats = [("png", None), ("bmp", None), ("tiff", (100, 90)), ("jpg", (400, 400))]
    lab = tmp_path / "lab"
    n = 0
    for f in files:
        cls = f.parent.name
        if cls not in spelling:
            continue
        ext, size = formats[n % len(formats)]
        out = lab / spelling[cls] / f"{f.stem}.{ext}"
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            (im.resize(size) if size else im).convert("RGB").save(out)
        n += 1
    (lab / "SNE" / "broken.png").write_bytes(b"not an image")
    return lab


def test_external_folder_is_scored_on_its_classes(exported, tmp_path, capsys):
    from bloodcells import external

    path, files, _ = exported
    lab = _lab_folder(files, tmp_path)
    code = external.main([str(path), str(lab), "--json", str(tmp_path / "s.json")])
    assert code == 0
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["classes_present"] == ["eosinophil", "lymphocyte", "neutrophil"]
    assert [e["file"].endswith("broken.png") for e in result["errors"]] == [True]
    model, meta = export.load_exported(path)
    good = [p for p in sorted(lab.rglob("*.*")) if p.name != "broken.png"]
    assert result["images"] == len(good)
    # the same numbers from the model's own probabilities on the same files
    probs = {p: pr for p, pr, *_ in predict.predict_files(model, meta, good, 16, progress=False)}
    names = {"SNE": "neutrophil", "Lymphocytes": "lymphocyte", "EOSINOPHIL": "eosinophil"}
    y = np.array([external.CLASSES.index(names[p.parent.name]) for p in good])
    p = np.stack([probs[f] for f in good])
    assert result["all_classes"]["accuracy"] == pytest.approx(float((p.argmax(1) == y).mean()))
    idx = [external.CLASSES.index(c) for c in result["classes_present"]]
    restricted = np.array(idx)[p[:, idx].argmax(1)]
    assert result["present_classes"]["accuracy"] == pytest.approx(float((restricted == y).mean()))
    # the model's detector judged every scored image; its flags are listed and counted
    flagged = {
        str(q.path)
        for q in predict.predict_files(model, meta, good, 16, progress=False)
        if q.ood["flagged"]
    }
    assert {f["file"] for f in result["unlike_training"]} == flagged
    assert f"{len(flagged)} of {len(good)} image(s) flagged" in external.format_scores(result)
    assert result["present_classes"]["accuracy"] >= result["all_classes"]["accuracy"]
    assert "argmax over the classes present" in capsys.readouterr().out


def test_external_folder_errors_name_the_problem(exported, tmp_path, capsys):
    from bloodcells import external

    path, _, _ = exported
    (tmp_path / "odd" / "Myeloblast").mkdir(parents=True)
    assert external.main([str(path), str(tmp_path / "odd")]) == 2
    assert "'Myeloblast' matches none" in capsys.readouterr().err
    assert external.main([str(path), str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_restricted_scores_by_hand():
    from bloodcells import external

    y = np.array([6, 6, 4])  # neutrophil, neutrophil, lymphocyte
    probs = np.zeros((3, 8))
    probs[0, 6] = 1.0  # right
    probs[1, [7, 4]] = [0.6, 0.4]  # platelet (absent class) first, then lymphocyte
    probs[2, 4] = 1.0  # right
    s = external.scores(y, probs, ["lymphocyte", "neutrophil"])
    assert s["all_classes"]["accuracy"] == pytest.approx(2 / 3)
    assert s["all_classes"]["per_class_recall"] == {"lymphocyte": 1.0, "neutrophil": 0.5}
    assert s["present_classes"]["accuracy"] == pytest.approx(2 / 3)  # 4 is wrong too
    assert s["present_classes"]["balanced_accuracy"] == pytest.approx(0.75)
    probs[1, 4] = 0.0  # now the only present class with any probability is neutrophil
    probs[1, 6] = 0.1
    assert external.scores(y, probs, ["lymphocyte", "neutrophil"])["present_classes"][
        "accuracy"
    ] == pytest.approx(1.0)


def test_the_export_is_the_most_robust_of_the_models_near_the_best(built, sample_dir, tmp_path):
    """Planted: "sharp" is best on clean validation images but right only on images a
    shift left unchanged; "steady", 0.2 points behind, is right on every image; "far" is
    out of reach. The export is "steady", chosen on validation under shift."""
    root = mini_project(tmp_path, built[0], sample_dir)
    x_val, y_val = experiment.load_splits(32, root)["val"]
    known = {im.tobytes() for im in np.asarray(x_val)}
    settings = {"test_images": 0, "severities": [3], "seed": 0, "export_within": 0.003}

    def predict(record, batch):  # the cases come stacked, each in the order of y_val
        truth = y_val[np.arange(len(batch)) % len(y_val)]
        if record["variant"] == "sharp":
            truth = np.where([im.tobytes() in known for im in batch], truth, (truth + 1) % 8)
        return np.eye(8)[truth]

    records = [
        {"variant": name, "key": name, "image_size": 32, "val_accuracy": acc}
        for name, acc in (("sharp", 0.950), ("steady", 0.948), ("far", 0.90))
    ]
    chosen, rows = export.choose_export(records, settings, predict, root)
    assert chosen["variant"] == "steady"
    assert [r["model"] for r in rows] == ["sharp", "steady"]  # "far" is not a candidate
    assert rows[1]["val_accuracy_under_shift"] == 1.0 > rows[0]["val_accuracy_under_shift"]
    # alone within reach, the best on validation is exported without the benchmark
    alone, rows = export.choose_export(records, settings | {"export_within": 0.001}, None, root)
    assert alone["variant"] == "sharp" and rows[0]["val_accuracy_under_shift"] is None
    card = export.model_card(
        {
            "model": "steady",
            "family": "cnn",
            "classes": ["a"],
            "input_size": 32,
            "weights": "none",
            "epochs": 1,
            "profile": "smoke",
            "git_commit": "x",
            "preprocessing": "p",
            "data_hash": "d" * 16,
            "metrics": {
                "test_accuracy": 0.9,
                "test_accuracy_ci95": [0.8, 1.0],
                "test_macro_f1": 0.9,
                "test_macro_f1_ci95": [0.8, 1.0],
                "test_balanced_accuracy": 0.9,
                "test_ece": 0.01,
                "ece_bins": 15,
                "per_class": {},
            },
            "chosen_from": export.choose_export(records, settings, predict, root)[1],
        }
    )
    assert "## How it was chosen" in card and "| steady | 94.80% | 100.00% |" in card


# --- Adapting the exported model to another lab (bloodcells.adapt, bloodcells-adapt) ------


def _first_batchnorm_input(model, x: np.ndarray) -> np.ndarray:
    """What the model's first BatchNormalization layer receives for ``x`` (a sub-model of
    the backbone, fed the preprocessed pixels)."""
    from bloodcells.adapt import batchnorm_layers

    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    first = batchnorm_layers(model)[0]
    assert first in backbone.layers  # the CNN's first BN sits in its backbone
    pixels = model.get_layer("preprocess")(x.astype("float32"))
    return np.asarray(keras.Model(backbone.inputs, first.input)(pixels))


@pytest.mark.parametrize("batch_size", [64, 7])
def test_adabn_sets_the_batchnorm_statistics_to_the_target_images(exported, batch_size):
    """AdaBN on stain-shifted images: the first BN layer's moving mean and variance become
    those of its inputs on the target images (in one batch, or image-weighted over
    uneven batches); the layer's momentum and the dropout rates are restored."""
    from bloodcells import adapt, shift

    path, _, _ = exported
    model, _ = export.load_exported(path)
    test_images = np.asarray(experiment.load_splits(32, path.parent)["test"][0])
    x = shift.apply(test_images, "stain (HED)", 3)
    first = adapt.batchnorm_layers(model)[0]
    before = np.asarray(first.moving_mean).copy()
    momentum = first.momentum
    assert adapt.adapt_batchnorm(model, x, batch_size=batch_size) == len(
        adapt.batchnorm_layers(model)
    )
    seen = _first_batchnorm_input(model, x)
    np.testing.assert_allclose(first.moving_mean, seen.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    if batch_size >= len(x):  # one batch: exactly its variance
        np.testing.assert_allclose(
            first.moving_variance, seen.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5
        )
    assert not np.allclose(before, first.moving_mean)
    assert first.momentum == momentum


def test_few_shot_retrains_only_the_classifier_and_fits_its_images(exported):
    from bloodcells import adapt

    path, _, _ = exported
    model, _ = export.load_exported(path)
    xv, yv = (np.asarray(a) for a in experiment.load_splits(32, path.parent)["train"])
    keep = adapt.per_class(yv, 6, seed=0)
    x, y = xv[keep], yv[keep]
    from bloodcells.inference import predict_proba

    before_acc = (predict_proba(model, x)[0].argmax(1) == y).mean()
    frozen = {
        w.path: np.asarray(w).copy() for w in model.weights if not w.path.startswith("probs/")
    }
    adapt.few_shot(model, x, y, epochs=60, learning_rate=0.01, seed=0)
    after_acc = (predict_proba(model, x)[0].argmax(1) == y).mean()
    assert after_acc > before_acc  # the classifier fits the lab's labelled images
    bn_stats = {w.path for layer in adapt.batchnorm_layers(model) for w in
                (layer.moving_mean, layer.moving_variance)}  # fmt: skip
    for w in model.weights:
        if w.path in frozen and w.path not in bn_stats:  # AdaBN moves only the BN statistics
            np.testing.assert_array_equal(np.asarray(w), frozen[w.path], err_msg=w.path)


def test_dihedral_views_are_the_turns_and_mirrors_with_their_labels():
    from bloodcells import adapt

    x = np.arange(2 * 3 * 3 * 1).reshape(2, 3, 3, 1)
    views, labels = adapt.dihedral_views(x, np.array([4, 7]), 8)
    assert views.shape == (16, 3, 3, 1) and list(labels) == [4, 7] * 8
    distinct = {views[i].tobytes() for i in range(0, 16, 2)}  # the first image's 8 views
    assert len(distinct) == 8  # an asymmetric image: every view differs
    np.testing.assert_array_equal(views[:2], x)  # view 0 is the image itself
    np.testing.assert_array_equal(views[2], np.rot90(x[0], 1))
    one, _ = adapt.dihedral_views(x, np.array([4, 7]), 1)
    np.testing.assert_array_equal(one, x)


def test_few_shot_on_views_trains_the_classifier_on_every_view(exported, monkeypatch):
    """With ``views``, the classifier layer learns from each support image's dihedral
    views: the features it is fitted on are those of the 8 views, labels repeated."""
    from bloodcells import adapt

    path, _, _ = exported
    model, _ = export.load_exported(path)
    xv, yv = (np.asarray(a) for a in experiment.load_splits(32, path.parent)["train"])
    keep = adapt.per_class(yv, 2, seed=0)
    seen = {}
    fit = adapt.softmax_regression

    def spy(feats, y, *args, **kwargs):
        seen["feats"], seen["y"] = feats, y
        return fit(feats, y, *args, **kwargs)

    monkeypatch.setattr(adapt, "softmax_regression", spy)
    adapt.few_shot(model, xv[keep], yv[keep], epochs=2, learning_rate=0.01, seed=0, views=8)
    assert len(seen["feats"]) == 8 * len(keep)
    np.testing.assert_array_equal(seen["y"], np.tile(yv[keep], 8))
    turned = adapt.features(model, np.rot90(xv[keep], 1, axes=(1, 2)))
    np.testing.assert_allclose(
        seen["feats"][len(keep) : 2 * len(keep)], turned, rtol=1e-4, atol=1e-5
    )


def test_few_shot_fine_tuning_trains_the_network_fits_its_images_and_is_seeded(exported):
    """``fine_tune_epochs``: the whole network trains (earlier layers' weights move, not
    only the classifier's), the support images are fitted better than before, and the same
    seed gives the same weights."""
    from bloodcells import adapt
    from bloodcells.inference import predict_proba

    path, _, _ = exported
    xv, yv = (np.asarray(a) for a in experiment.load_splits(32, path.parent)["train"])
    keep = adapt.per_class(yv, 4, seed=0)
    x, y = xv[keep], yv[keep]
    runs = []
    for _ in range(2):
        model, _ = export.load_exported(path)
        before_loss = -np.log(predict_proba(model, x)[0][np.arange(len(y)), y]).mean()
        start = {w.path: np.asarray(w).copy() for w in model.trainable_weights}
        adapt.few_shot(model, x, y, 1, 0.001, seed=3, views=8, fine_tune_epochs=3,
                       fine_tune_learning_rate=0.001)  # fmt: skip
        after_loss = -np.log(predict_proba(model, x)[0][np.arange(len(y)), y]).mean()
        assert after_loss < before_loss
        moved = {p for p, w in start.items() if not np.allclose(w, _weight(model, p))}
        assert any(not p.startswith("probs/") for p in moved), moved  # not the head alone
        runs.append([np.asarray(w) for w in model.weights])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def _weight(model, path: str) -> np.ndarray:
    return next(np.asarray(w) for w in model.weights if w.path == path)


def test_softmax_regression_takes_kerass_adam_steps_and_is_seeded():
    """The few-shot classifier's NumPy loop against Keras: one softmax Dense layer trained
    with Keras's Adam on the same batches gives the same weights; the batches' order is
    drawn from the seed."""
    from bloodcells import adapt

    rng = np.random.default_rng(7)
    feats = rng.normal(size=(40, 6)).astype("float32")
    y = rng.integers(0, 3, size=40)
    start = (rng.normal(size=(6, 3)).astype("float32"), rng.normal(size=3).astype("float32"))
    # one batch per epoch: the order does not change the gradient, so Keras's fit (which
    # shuffles its own way) takes the very same steps
    kernel, bias = adapt.softmax_regression(feats, y, start, 25, 0.05, seed=0, batch_size=40)
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(3, activation="softmax")
    head = keras.Sequential([keras.Input((6,)), layer])
    layer.set_weights(list(start))
    head.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    head.fit(feats, y, epochs=25, batch_size=40, shuffle=False, verbose=0)
    np.testing.assert_allclose(kernel, layer.get_weights()[0], atol=2e-4)
    np.testing.assert_allclose(bias, layer.get_weights()[1], atol=2e-4)
    assert not np.allclose(kernel, start[0], atol=0.1)  # it did train
    # mini-batches: the seed draws their order
    a = adapt.softmax_regression(feats, y, start, 3, 0.05, seed=0, batch_size=8)
    b = adapt.softmax_regression(feats, y, start, 3, 0.05, seed=0, batch_size=8)
    c = adapt.softmax_regression(feats, y, start, 3, 0.05, seed=1, batch_size=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], c[0])


def test_fit_classifier_refuses_a_classifier_that_is_not_softmax():
    """Few-shot adaptation retrains a softmax layer: a ``probs`` layer with another
    activation is refused, naming the layer and its activation, and left untouched."""
    from bloodcells import adapt

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid", name="probs")(hidden))
    before = [w.copy() for w in model.get_layer("probs").get_weights()]
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    with pytest.raises(ValueError, match=r"'probs' has activation 'sigmoid'.*softmax"):
        adapt.fit_classifier(model, x, np.arange(6) % 3, epochs=2, learning_rate=0.01)
    for w, b in zip(model.get_layer("probs").get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)


def test_adaptation_benchmark_scores_each_method_and_restores_the_model(exported):
    from bloodcells import adapt

    path, _, _ = exported
    model, _ = export.load_exported(path)
    splits = experiment.load_splits(32, path.parent)
    val, test = ((np.asarray(a), np.asarray(b)) for a, b in (splits["val"], splits["test"]))
    weights = [w.copy() for w in model.get_weights()]
    settings = adapt.check_settings({"per_class": 2, "unlabelled": 8, "epochs": 3, "seeds": [0, 1],
                                     "shifts": ["stain (HED)", "defocus"]})  # fmt: skip
    table = adapt.benchmark(model, val, test, settings, severities=(1, 3), seed=0)
    assert len(table) == (1 + 2 * 2) * (1 + 2 * 2)  # cases x (as is + 2 methods x 2 draws)
    assert set(table["method"]) == {"none", "adabn", "few-shot"}
    assert table.loc[table["method"] == "none", "seed"].isna().all()
    assert set(table.loc[table["method"] == "adabn", "seed"]) == {0, 1}
    assert table["accuracy"].between(0, 1).all()
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    summary = adapt.summary(table)
    assert list(summary.index) == ["none", "adabn", "few-shot"]
    # the mean under shift is the mean over draws of each draw's mean
    few = table[(table["method"] == "few-shot") & (table["shift"] != "none")]
    per_draw = few.groupby("seed")["accuracy"].mean()
    assert summary.loc["few-shot", "mean accuracy under shift"] == pytest.approx(per_draw.mean())
    assert summary.loc["few-shot", "sd over draws"] == pytest.approx(per_draw.std(ddof=1))
    assert summary.loc["none", "sd over draws"] == 0.0
    said = adapt.conclusion(table, "cnn", settings)
    assert "few-shot adaptation on 2 labelled images per class" in said
    assert "Averaged over 2 draws" in said


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"per_class": 0}, r"generalisation\.adapt\.per_class"),
        ({"learning_rate": 2}, r"generalisation\.adapt\.learning_rate"),
        ({"shifts": ["sepia"]}, r"generalisation\.adapt\.shifts"),
        ({"steps": 3}, r"generalisation\.adapt' has unknown keys \['steps'\]"),
        ({"seeds": [1, 1]}, r"generalisation\.adapt\.seeds"),
    ],
)
def test_adaptation_settings_name_the_key(section, match):
    from bloodcells import adapt
    from bloodcells.config import ParamsError

    with pytest.raises(ParamsError, match=match):
        adapt.check_settings(section)


def test_the_adapt_command_writes_a_model_predict_reads(exported, sample_dir, tmp_path, capsys):
    """Few-shot on the sample's class folders (its unreadable files listed, not fatal),
    AdaBN on an unlabelled folder; both adapted models load and predict like the export."""
    from bloodcells import adapt

    path, files, _ = exported
    out = tmp_path / "adapted.keras"
    assert adapt.main([str(path), str(sample_dir), "--out", str(out), "--epochs", "3"]) == 0
    said = capsys.readouterr().out
    assert "few-shot" in said and "could not be read" in said
    model, meta = export.load_exported(out)
    assert meta["adapted"]["method"] == "few-shot"
    assert set(meta["adapted"]["images_per_class"]) == set(meta["classes"])
    assert meta["adapted"]["unreadable"]  # the sample's odd files
    assert meta["model"] == export.read_metadata(path)["model"]
    assert meta["adapted"]["views"] == adapt.DEFAULTS["views"]  # what it trained on, recorded
    assert "classifier layer" in meta["adapted"]["trained"]
    rows = list(predict.predict_files(model, meta, files[:4], 4, progress=False))
    assert all(error is None for _, _, error, _ in rows)

    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for f in files[:6]:
        (unlabelled / f.name).write_bytes(f.read_bytes())
    out2 = tmp_path / "adabn.keras"
    assert adapt.main([str(path), str(unlabelled), "--out", str(out2), "--unlabelled"]) == 0
    assert export.read_metadata(out2)["adapted"]["method"] == "adabn"
    assert export.read_metadata(out2)["adapted"]["images"] == 6


def test_the_adapt_command_errors_name_the_problem(exported, tmp_path, capsys):
    from bloodcells import adapt

    path, _, _ = exported
    assert adapt.main([str(path), str(tmp_path), "--out", str(path)]) == 2
    assert "is the model itself" in capsys.readouterr().err
    (tmp_path / "Granulocytes of sorts").mkdir()
    assert adapt.main([str(path), str(tmp_path), "--out", str(tmp_path / "a.keras")]) == 2
    err = capsys.readouterr().err
    assert "matches none of the eight PBC classes" in err and "neutrophil" in err
    assert not (tmp_path / "a.keras").exists()
    for option, value in (("--views", "9"), ("--fine-tune-epochs", "-2")):
        assert adapt.main([str(path), str(tmp_path), "--out", str(tmp_path / "a.keras"),
                           option, value]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.startswith(f"bloodcells-adapt: {option} must be an integer"), err


def test_inference_batches_by_pixels_and_predicts_the_same_whatever_the_batch(exported):
    from bloodcells.inference import TRACE_FROM_BATCHES, batch_size_for, predict_proba

    path, _, _ = exported
    model, _ = export.load_exported(path)
    x = np.asarray(experiment.load_splits(32, path.parent)["train"][0])
    # 256 images at 64 px per batch: 20 at 224 px (DenseNet-201 at 224 px stacked 256
    # images into one call and needed more than 24 GB), never more than 256, never 0
    assert [batch_size_for(np.empty((1, s, s, 3))) for s in (32, 64, 96, 224, 4096)] == [
        256, 256, 113, 20, 1
    ]  # fmt: skip
    calls = []

    def counting(batch, training):
        calls.append(batch.shape[0])  # None while traced: any batch size
        return model(batch, training=training)

    whole, _ = predict_proba(model, x)
    assert len(x) < 256 * TRACE_FROM_BATCHES  # fewer batches than that: eager
    split, _ = predict_proba(counting, x, batch_size=7, traced=False)
    assert calls == [7] * (len(x) // 7) + ([len(x) % 7] if len(x) % 7 else [])
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-6)  # same order, same values
    # as many batches as TRACE_FROM_BATCHES, the last one shorter: traced once, for them all
    size = -(-len(x) // TRACE_FROM_BATCHES)
    assert len(x) % size and len(range(0, len(x), size)) == TRACE_FROM_BATCHES
    calls.clear()
    traced, _ = predict_proba(counting, x, batch_size=size)
    assert calls == [None]
    np.testing.assert_allclose(traced, whole, rtol=1e-5, atol=1e-6)
    calls.clear()
    predict_proba(counting, x, batch_size=size + 1)  # one batch fewer: eager
    assert None not in calls and len(calls) == TRACE_FROM_BATCHES - 1
