"""``bloodcells-predict``: classify image files or folders with an exported model.

Preprocessing is exactly the training one (``bloodcells.preprocess.load_resized`` at the
size stored in the model's metadata). Files that cannot be read or decoded are skipped with
a one-line error naming the file; the rest are still classified, and the exit status is 1
when any file failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from bloodcells.console import native_logs_held
from bloodcells.export import NotAModelError, load_exported
from bloodcells.inference import predict_proba
from bloodcells.preprocess import load_resized

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def collect(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to classify (folders searched recursively for image extensions), and errors."""
    files, errors = [], []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            errors.append((path, "no such file or folder"))
    return files, errors


def load_image(path: Path, size: int) -> np.ndarray:
    """One image as the model's input; raises ValueError with a one-line reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return load_resized(path, size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"refused: declared size too large (decompression bomb?): {exc}") from exc
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read (empty, text or unknown format)") from None
    except PermissionError:
        raise ValueError("permission denied") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode ({exc}); truncated or corrupt?") from exc


def load_images(files: list[Path], size: int) -> tuple[np.ndarray, list[int], list[dict]]:
    """``files`` as one uint8 batch at ``size`` px, the indices of those read, and one
    ``{"file", "error"}`` per file that could not be (:func:`load_image`'s reason): an
    unreadable image is listed, never fatal."""
    images, kept, errors = [], [], []
    for i, path in enumerate(files):
        try:
            images.append(load_image(path, size))
            kept.append(i)
        except ValueError as exc:
            errors.append({"file": str(path), "error": str(exc)})
    return np.stack(images) if images else np.empty((0, size, size, 3), np.uint8), kept, errors


class Prediction(NamedTuple):
    """One file's answer: probabilities, or the error that stopped it; and, when the model
    carries an out-of-distribution detector (``metadata["ood"]``), its scores and flag."""

    path: Path
    probs: np.ndarray | None
    error: str | None
    ood: dict | None = None


def predict_files(
    model, metadata: dict, files: list[Path], batch_size: int = 64, progress: bool = True
):
    """Yield a :class:`Prediction` for each file, batch by batch."""
    from bloodcells.ood import Detector

    size = int(metadata["input_size"])
    detector = Detector.from_json(metadata["ood"]) if metadata.get("ood") else None
    bar = tqdm(total=len(files), unit="img", disable=not progress, mininterval=1)
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        x, kept, errors = load_images(chunk, size)
        ok = [chunk[i] for i in kept]
        if ok:
            probs = predict_proba(model, x, batch_size)[0]
            flags = detector.flags(probs, x) if detector else None
            for i, (path, pr) in enumerate(zip(ok, probs, strict=True)):
                ood = (
                    {
                        "flagged": bool(flags["flagged"][i]),
                        "reason": str(flags["reason"][i]),
                        "confidence": float(flags["confidence"][i]),
                        "colour_distance": float(flags["colour_distance"][i]),
                    }
                    if flags
                    else None
                )
                yield Prediction(path, pr, None, ood)
        yield from (Prediction(Path(e["file"]), None, e["error"]) for e in errors)
        bar.update(len(chunk))
    bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bloodcells-predict", description="Classify blood-cell images with a trained model."
    )
    parser.add_argument("model", type=Path, help="an exported model (export/best.keras)")
    parser.add_argument("paths", type=Path, nargs="+", help="image files or folders")
    parser.add_argument("--csv", type=Path, help="write file, prediction and every probability")
    parser.add_argument("--json", type=Path, help="the same as JSON")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quiet", action="store_true", help="no table, no progress bar")
    args = parser.parse_args(argv)
    try:
        with native_logs_held():
            model, metadata = load_exported(args.model)
    except NotAModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    classes = metadata["classes"]
    files, errors = collect(args.paths)
    rows = []
    t0 = time.perf_counter()
    for path, probs, error, ood in predict_files(
        model, metadata, files, args.batch_size, progress=not args.quiet and len(files) > 1
    ):
        if error:
            errors.append((path, error))
            continue
        rows.append(
            {
                "file": str(path),
                "prediction": classes[int(np.argmax(probs))],
                "probability": float(np.max(probs)),
                # unlike the training data: flagged, with why (metadata["ood"], validation)
                **(
                    {
                        "unlike_training": ood["flagged"],
                        "why": ood["reason"],
                        "calibrated_confidence": ood["confidence"],
                        "colour_distance": ood["colour_distance"],
                    }
                    if ood
                    else {}
                ),
                **{f"p_{c}": float(p) for c, p in zip(classes, probs, strict=True)},
            }
        )
    seconds = time.perf_counter() - t0
    for path, error in errors:
        print(f"error: {path}: {error}", file=sys.stderr)
    if not args.quiet:
        for r in rows:
            flag = f"  UNLIKE TRAINING DATA ({r['why']})" if r.get("unlike_training") else ""
            print(f"{r['prediction']:<13} {r['probability']:.3f}  {r['file']}{flag}")
        flagged = sum(bool(r.get("unlike_training")) for r in rows)
        if flagged:
            print(
                f"{flagged} image(s) flagged as unlike the training data: treat their "
                "predictions as unreliable.",
                file=sys.stderr,
            )
        if rows:
            print(
                f"{len(rows)} image(s) in {seconds:.2f} s ({len(rows) / seconds:.1f} images/s)",
                file=sys.stderr,
            )
    if args.csv and rows:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": metadata["model"],
                    "predictions": rows,
                    "errors": [{"file": str(p), "error": e} for p, e in errors],
                },
                indent=2,
            )
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
