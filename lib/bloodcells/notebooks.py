"""Keeping notebooks clean: no outputs, no execution counts, stable metadata.

A notebook is a DVC dependency of its stage, so its bytes must change only when its code
or prose does. ``jupyter_server_config.py`` (used by ``make lab``) calls
:func:`pre_save_hook` on every save in JupyterLab; ``python -m bloodcells.notebooks``
cleans files in place (``--check`` only reports).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

KERNELSPEC = {"display_name": "Python (bloodcells)", "language": "python", "name": "bloodcells"}
KEEP_CELL_METADATA = ("tags",)


def clean_notebook(nb: dict[str, Any]) -> dict[str, Any]:
    """Return ``nb`` (nbformat JSON as a dict) without outputs, counts or volatile metadata."""
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        cell["metadata"] = {k: meta[k] for k in KEEP_CELL_METADATA if k in meta}
        cell.pop("id", None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    nb["metadata"] = {
        "kernelspec": KERNELSPEC,
        "language_info": {"name": "python"},
    }
    nb["nbformat"], nb["nbformat_minor"] = 4, 4
    return nb


def dumps(nb: dict[str, Any]) -> str:
    """The notebook as Jupyter writes it (nbformat: keys sorted, indent 1, a final newline),
    so saving a committed notebook in JupyterLab leaves its bytes, and DVC's hash, alone."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def pre_save_hook(model: dict, **_: Any) -> None:
    """Jupyter server hook: strip a notebook before it is written to disk."""
    if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
        clean_notebook(model["content"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Strip outputs from notebooks.")
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="report dirty notebooks only")
    args = parser.parse_args(argv)
    dirty = []
    for path in args.paths:
        text = path.read_text()
        clean = dumps(clean_notebook(json.loads(text)))
        if clean != text:
            dirty.append(path)
            if not args.check:
                path.write_text(clean)
    for path in dirty:
        print(f"{'not clean' if args.check else 'cleaned'}: {path}")
    return 1 if (dirty and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
