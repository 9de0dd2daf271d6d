"""Exporting a trained model as one file with its metadata, and its model card.

The export is the Keras ``.keras`` archive with one more member, ``bloodcells.json``: class
names, input size, preprocessing, metrics, data hash and commit. Keras ignores the extra
member when loading; :func:`read_metadata` reads it without loading the model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from bloodcells.paths import CLASSES, manifest_path, project_root, resolve

METADATA = "bloodcells.json"


class NotAModelError(ValueError):
    """The file is not a model exported by this project."""


def export_model(
    record: dict,
    source: Path,
    dest: Path,
    images: int | None = None,
    ece_bins: int = 15,
    ood: dict | None = None,
    chosen_from: list[dict] | None = None,
) -> Path:
    """Copy ``source`` (a saved .keras model) to ``dest`` with the run's metadata inside;
    ``images``: how many images the study kept (train, validation and test together),
    ``ece_bins``: the bins its ECE was computed with, ``ood``: the out-of-distribution
    detector (:class:`bloodcells.ood.Detector` as JSON) that ``bloodcells-predict`` flags
    inputs with, ``chosen_from``: the candidates it was chosen from
    (:func:`choose_export`)."""
    from bloodcells.models import stable_archive

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    shutil.copy2(source, tmp)
    test = record["test"]
    metadata = {
        "model": record["variant"],
        "family": record["family"],
        "classes": list(CLASSES),
        "input_size": record["image_size"],
        "preprocessing": (
            "RGB, resized to input_size x input_size (Pillow JPEG draft + bilinear), uint8 "
            "0..255 fed to the model; scaling is inside the model (layer 'preprocess')"
        ),
        "weights": record["weights"],
        "epochs": record["epochs"],
        "metrics": {
            "test_accuracy": test["accuracy"],
            "test_accuracy_ci95": test["ci95"]["accuracy"],
            "test_macro_f1": test["macro_f1"],
            "test_macro_f1_ci95": test["ci95"]["macro_f1"],
            "test_balanced_accuracy": test["balanced_accuracy"],
            "test_ece": test["ece"],
            "ece_bins": ece_bins,
            "per_class": test["per_class"],
        },
        "images": images,
        "ood": ood,
        "chosen_from": chosen_from,
        "data_hash": record["provenance"]["data_hash"],
        "git_commit": record["provenance"]["git_commit"],
        "profile": record["provenance"]["profile"],
    }
    stable_archive(tmp, {METADATA: json.dumps(metadata, indent=2).encode()})
    tmp.replace(dest)
    return dest


def read_metadata(path: Path) -> dict:
    """The metadata of an exported model; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise NotAModelError(f"{path}: no such file.")
    if not zipfile.is_zipfile(path):
        raise NotAModelError(f"{path}: not a Keras model archive (.keras).")
    with zipfile.ZipFile(path) as zf:
        if METADATA not in zf.namelist():
            raise NotAModelError(
                f"{path}: a Keras archive without {METADATA}; export it with "
                "`python -m bloodcells.export` so its size and classes are known."
            )
        return json.loads(zf.read(METADATA))


def load_exported(path: Path):
    """(model, metadata) of an exported model, loaded in Keras's safe mode
    (:func:`bloodcells.models.load_saved`): a crafted model file cannot run code."""
    from bloodcells.models import load_saved

    metadata = read_metadata(path)
    try:
        model = load_saved(path)
    except Exception as exc:  # Keras raises several types for a bad archive
        raise NotAModelError(f"{path}: cannot be loaded as a Keras model ({exc}).") from exc
    return model, metadata


def model_card(metadata: dict) -> str:
    """The model card (markdown): intended use, data and its limits, metrics, calibration."""
    m = metadata["metrics"]
    rows = "\n".join(
        f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for c, v in m["per_class"].items()
    )
    acc_ci = m["test_accuracy_ci95"]
    f1_ci = m["test_macro_f1_ci95"]
    return f"""# Model card: {metadata["model"]}

## Intended use
Research on automatic classification of single peripheral-blood-cell images into eight
classes ({", ".join(metadata["classes"])}). **Not for diagnosis** or any clinical decision.

## Model
Family {metadata["family"]}, input {metadata["input_size"]} x {metadata["input_size"]} px RGB,
weights `{metadata["weights"]}`, {metadata["epochs"]} epoch(s), profile `{metadata["profile"]}`,
git commit `{metadata["git_commit"]}`. Preprocessing: {metadata["preprocessing"]}.

## Data and its limits
Trained, validated and tested on {_images(metadata)} of the PBC dataset (Acevedo et al.,
Data in Brief 30, 2020, CC BY 4.0): normal cells from one laboratory (Hospital Clinic of
Barcelona), one scanner (CellaVision DM96) and one staining protocol, cleaned of non-images,
duplicates and label conflicts (data hash `{metadata["data_hash"][:16]}`). The split is by
image: there is no patient identifier, so images of the same patient may fall on both
sides. Expect lower scores on other laboratories, scanners, stains and on pathological
cells.

## Metrics (held-out test split, 95% bootstrap CIs)
- accuracy {100 * m["test_accuracy"]:.2f}% [{100 * acc_ci[0]:.2f}, {100 * acc_ci[1]:.2f}]
- macro-F1 {100 * m["test_macro_f1"]:.2f}% [{100 * f1_ci[0]:.2f}, {100 * f1_ci[1]:.2f}]
- balanced accuracy {100 * m["test_balanced_accuracy"]:.2f}%

| class | precision | recall | F1 | support |
| --- | --- | --- | --- | --- |
{rows}

## Calibration
Expected calibration error on the test split: {m["test_ece"]:.4f} ({m["ece_bins"]} bins).
Probabilities are the softmax outputs; see notebook 12 for reliability diagrams and
temperature scaling.
{_choice_section(metadata.get("chosen_from"), metadata["model"])}\
{_ood_section(metadata.get("ood"))}"""


def _choice_section(rows: list[dict] | None, name: str) -> str:
    if not rows:
        return ""
    if len(rows) == 1:
        return (
            f"\n## How it was chosen\nThe best validation accuracy "
            f"({100 * rows[0]['val_accuracy']:.2f}%); no other model came within "
            "`generalisation.export_within` of it.\n"
        )
    lines = "\n".join(
        f"| {r['model']} | {100 * r['val_accuracy']:.2f}% | "
        f"{100 * r['val_accuracy_under_shift']:.2f}% |"
        for r in rows
    )
    return f"""
## How it was chosen
The models within `generalisation.export_within` of the best validation accuracy, ranked by
their mean validation accuracy under the shift benchmark's shifts; {name} is the most robust.

| model | validation accuracy | under shift (validation) |
| --- | --- | --- |
{lines}
"""


def _ood_section(ood: dict | None) -> str:
    if not ood:
        return ""
    return f"""
## Inputs unlike the training data
`bloodcells-predict` and `bloodcells-evaluate` flag an image whose temperature-scaled
confidence (T = {ood["temperature"]:.2f}) is below {ood["confidence_threshold"]:.3f}, or whose
colour statistics lie further than {ood["colour_threshold"]:.2f} (Mahalanobis) from the
training images'.
Each threshold flags {100 * ood["false_flag_rate"]:.0f}% of the validation images; notebook 13
measures how often each shift of the test images is flagged.
"""


def _images(metadata: dict) -> str:
    n = metadata.get("images")
    return f"{n:,} images" if n else "the images"


def card_html(markdown_text: str) -> str:
    """The card as one standalone HTML page, styled like ``reports/index.html``.

    Rendered by markdown-it-py (CommonMark plus tables), so emphasis, code, lists, tables
    and paragraphs that wrap over several source lines come out as a reader expects.
    """
    from markdown_it import MarkdownIt

    from bloodcells.site import CSS

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)
    head = f"<head><meta charset='utf-8'><title>Model card</title><style>{CSS}</style></head>"
    return f"<!DOCTYPE html><html lang='en'>{head}<body>{body}</body></html>"


def choose_export(
    records: list[dict], settings: dict, predict, root: Path
) -> tuple[dict, list[dict]]:
    """The model to export: of the runs within ``settings["export_within"]`` of the best
    validation accuracy, the one with the best mean accuracy on the **validation** images
    under the shift benchmark's shifts (``settings``: the ``generalisation`` params; a
    stratified subset of ``test_images`` validation images). ``predict(record, x)`` returns
    class probabilities. Returns the chosen record and one row per candidate."""
    from bloodcells import shift
    from bloodcells.experiment import load_splits

    best = max(r["val_accuracy"] for r in records)
    near = sorted(
        (r for r in records if r["val_accuracy"] >= best - settings["export_within"]),
        key=lambda r: -r["val_accuracy"],
    )
    rows = [
        {"model": r["variant"], "val_accuracy": r["val_accuracy"], "val_accuracy_under_shift": None}
        for r in near
    ]
    if len(near) == 1:
        return near[0], rows
    for row, record in zip(rows, near, strict=True):
        x, y = load_splits(record["image_size"], root)["val"]
        keep = shift.stratified_subset(y, settings["test_images"], settings["seed"])
        table = shift.benchmark(
            lambda _, batch, record=record: predict(record, batch),
            {record["variant"]: record["image_size"]},
            {record["image_size"]: np.asarray(x)[keep]},
            y[keep],
            severities=tuple(settings["severities"]),
            seed=settings["seed"],
        )
        row["val_accuracy_under_shift"] = float(table[table["shift"] != "none"]["accuracy"].mean())
    pick = max(
        range(len(near)), key=lambda i: (rows[i]["val_accuracy_under_shift"], -i)
    )  # the most robust; on a tie, the better in-domain
    return near[pick], rows


def export_best(root: Path | None = None) -> Path:
    """Export the model :func:`choose_export` picks on validation, with its model card."""
    from bloodcells.compare import load_model, read_records
    from bloodcells.config import load_params
    from bloodcells.experiment import evaluate_run, load_predictions, load_splits, read_run
    from bloodcells.inference import predict_proba
    from bloodcells.ood import fit_detector
    from bloodcells.preprocess import read_manifest

    root = root or project_root()
    params = load_params()
    chosen, candidates = choose_export(
        read_records(root),
        params["generalisation"],
        lambda record, x: predict_proba(load_model(record, root), x)[0],
        root,
    )
    key, best = chosen["key"], chosen["variant"]
    record = evaluate_run(params, read_run(key, best, root), root)
    manifest = read_manifest(manifest_path(root))
    # the detector: colour statistics of the training images, thresholds on validation
    data = load_splits(record["image_size"], root)
    preds = load_predictions(key, best, root)
    detector = fit_detector(
        np.asarray(data["train"][0]), preds["val_probs"], preds["val_y"], np.asarray(data["val"][0])
    )
    dest = export_model(
        record,
        resolve(Path("models") / key / best / "model.keras", root),
        root / "export" / "best.keras",
        images=int(manifest["split"].isin(["train", "val", "test"]).sum()),
        ece_bins=int(params["evaluate"]["ece_bins"]),
        ood=detector.to_json(),
        chosen_from=candidates,
    )
    card = model_card(read_metadata(dest))
    (root / "reports" / "model_card.md").write_text(card)
    (root / "reports" / "model_card.html").write_text(card_html(card))
    return dest


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description="Export the best model with its model card.").parse_args(
        argv
    )
    print(f"exported {export_best()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
