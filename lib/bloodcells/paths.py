"""Where things live in the project, resolved from the project root."""

from __future__ import annotations

import json
import os
from pathlib import Path

DATASET_DIRNAME = "PBC_dataset_normal_DIB"
CLASSES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)


def project_root(start: Path | None = None) -> Path:
    """Return the nearest folder at or above ``start`` (default: cwd) holding ``params.yaml``.

    ``BLOODCELLS_ROOT`` overrides the search. Notebooks run from ``notebooks/`` in JupyterLab
    and from the root under papermill; both find the same root this way.
    """
    env = os.environ.get("BLOODCELLS_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"No params.yaml found in {here} or any folder above it: run from inside the project "
        "or set BLOODCELLS_ROOT to the project folder."
    )


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """Resolve ``path`` against the project root unless it is absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root or project_root()) / p


def raw_dataset_dir(root: Path | None = None) -> Path:
    return resolve(Path("data/raw") / DATASET_DIRNAME, root)


def manifest_path(root: Path | None = None) -> Path:
    return resolve("data/interim/manifest.csv", root)


def quality_path(root: Path | None = None) -> Path:
    return resolve("data/interim/data_quality.json", root)


def processed_dir(size: int, root: Path | None = None) -> Path:
    return resolve(Path("data/processed") / str(size), root)


def reports_dir(root: Path | None = None) -> Path:
    return resolve("reports", root)


def write_json(path: Path, body: dict) -> Path:
    """Write ``body`` as JSON atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
