"""``bloodcells-evaluate``: score an exported model on a labelled folder from another lab.

The folder is laid out as ``<class>/<image>``; class folder names are mapped onto the eight
PBC classes, accepting common spellings (``Neutrophil``, ``NEUTROPHIL``, ``neutrophils``,
``SNE``, ``Lymphocytes``, ``immature_granulocytes``, ...). Scores are restricted to the
classes present: accuracy, balanced accuracy, per-class recall and the confusion matrix,
then the same with the argmax restricted to the classes present (a five-class white-cell
set is not asked to tell platelets from erythroblasts). Any image Pillow reads, any size.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from bloodcells.paths import CLASSES

#: accepted folder names per class, after normalising (lower case, separators to spaces,
#: a plural "s" dropped); abbreviations as in CellaVision exports and Raabin-WBC
ALIASES: dict[str, tuple[str, ...]] = {
    "basophil": ("basophil", "baso", "ba"),
    "eosinophil": ("eosinophil", "eos", "eo"),
    "erythroblast": ("erythroblast", "nrbc", "erb", "normoblast"),
    "ig": (
        "ig", "immature granulocyte", "metamyelocyte", "myelocyte", "promyelocyte",
        "mmy", "my", "pmy",
    ),
    "lymphocyte": ("lymphocyte", "lymph", "ly", "lym"),
    "monocyte": ("monocyte", "mono", "mo"),
    "neutrophil": (
        "neutrophil", "neut", "neu", "sne", "bne", "segmented neutrophil", "band neutrophil",
    ),
    "platelet": ("platelet", "thrombocyte", "plt"),
}  # fmt: skip

_LOOKUP = {alias: cls for cls, names in ALIASES.items() for alias in names}


def normalise(name: str) -> str:
    """Lower case, ``_``/``-``/spaces collapsed to one space, a plural ``s`` dropped."""
    text = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    return text[:-1] if text.endswith("s") and text[:-1] in _LOOKUP else text


def class_of(folder_name: str) -> str:
    """The PBC class a folder name means; a ValueError listing the accepted names if none."""
    key = normalise(folder_name)
    if key in _LOOKUP:
        return _LOOKUP[key]
    accepted = "; ".join(f"{c}: {', '.join(names)}" for c, names in ALIASES.items())
    raise ValueError(
        f"Class folder {folder_name!r} matches none of the eight PBC classes. Rename it to one "
        f"of the accepted names (any case, '_' or '-' for spaces, plural allowed): {accepted}."
    )


def labelled_files(folder: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files under ``folder/<class>/`` (recursively), their class indices, and the
    classes present, in PBC order. Errors name the folder and what to do."""
    from bloodcells.predict import EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected <class>/<image> inside).")
    files, labels = [], []
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    if not subfolders:
        raise ValueError(f"{folder}: no class folders inside (expected <class>/<image>).")
    for sub in subfolders:
        cls = class_of(sub.name)
        found = sorted(p for p in sub.rglob("*") if p.suffix.lower() in EXTENSIONS)
        files += found
        labels += [CLASSES.index(cls)] * len(found)
    if not files:
        raise ValueError(f"{folder}: no images in its class folders.")
    y = np.array(labels)
    present = [c for i, c in enumerate(CLASSES) if (y == i).any()]
    return files, y, present


def scores(y: np.ndarray, probs: np.ndarray, present: list[str]) -> dict:
    """Accuracy, balanced accuracy (over the classes present), per-class recall and the
    confusion matrix (rows: classes present; columns: all classes), for the plain argmax and
    for the argmax restricted to the classes present."""
    from sklearn.metrics import confusion_matrix

    idx = [CLASSES.index(c) for c in present]
    out = {"classes_present": present, "images": int(len(y))}
    restricted = np.full_like(probs, -np.inf)
    restricted[:, idx] = probs[:, idx]
    for name, pred in (("all_classes", probs.argmax(1)), ("present_classes", restricted.argmax(1))):
        cm = confusion_matrix(y, pred, labels=list(range(len(CLASSES))))[idx]
        recall = {c: float(cm[i, CLASSES.index(c)] / cm[i].sum()) for i, c in enumerate(present)}
        out[name] = {
            "accuracy": float((pred == y).mean()),
            "balanced_accuracy": float(np.mean(list(recall.values()))),  # over classes present
            "per_class_recall": recall,
            "confusion_matrix": cm.tolist(),
        }
    return out


def score_folder(model, metadata: dict, folder: Path, batch_size: int = 64) -> dict:
    """Score an exported model on a labelled folder; unreadable files are listed, not fatal."""
    from bloodcells.predict import predict_files

    files, y, present = labelled_files(folder)
    row = {path: i for i, path in enumerate(files)}
    probs, keep, errors, flagged = [], [], [], []
    for path, p, error, ood in predict_files(model, metadata, files, batch_size, progress=False):
        if error:
            errors.append({"file": str(path), "error": error})
        else:
            probs.append(p)
            keep.append(row[path])
            if ood and ood["flagged"]:
                flagged.append({"file": str(path), "why": ood["reason"]})
    if not probs:
        raise ValueError(f"{folder}: none of its {len(files)} images could be read.")
    out = scores(y[keep], np.stack(probs), present)
    out["folder"] = str(folder)
    out["errors"] = errors
    # images the model's detector finds unlike its training data (None: it has none)
    out["unlike_training"] = flagged if metadata.get("ood") else None
    return out


def format_scores(result: dict) -> str:
    """The scores as a short plain-text report."""
    lines = [
        f"{result['folder']}: {result['images']} images, classes present: "
        f"{', '.join(result['classes_present'])}"
    ]
    for name, label in (("all_classes", "argmax over all 8 classes"),
                        ("present_classes", "argmax over the classes present")):  # fmt: skip
        s = result[name]
        lines.append(
            f"  {label}: accuracy {100 * s['accuracy']:.2f}%, balanced accuracy "
            f"{100 * s['balanced_accuracy']:.2f}%"
        )
        lines += [f"    recall {c:<13} {100 * r:6.2f}%" for c, r in s["per_class_recall"].items()]
    if result.get("unlike_training") is not None:
        lines.append(
            f"  {len(result['unlike_training'])} of {result['images']} image(s) flagged as "
            "unlike the training data (listed in --json)"
        )
    if result["errors"]:
        lines.append(f"  {len(result['errors'])} file(s) could not be read (listed in --json)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bloodcells-evaluate",
        description="Score an exported model on a folder laid out as <class>/<image>.",
    )
    parser.add_argument("model", type=Path, help="an exported model (export/best.keras)")
    parser.add_argument("folder", type=Path, help="a folder of class folders")
    parser.add_argument("--json", type=Path, help="write the scores as JSON")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    from bloodcells.console import native_logs_held
    from bloodcells.export import NotAModelError, load_exported

    try:
        with native_logs_held():
            model, metadata = load_exported(args.model)
        result = score_folder(model, metadata, args.folder, args.batch_size)
    except (NotAModelError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_scores(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
