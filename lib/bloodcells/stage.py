"""The one notebook-stage runner: papermill execution plus an HTML report.

``python -m bloodcells.stage notebooks/01_preprocessing.ipynb`` executes the notebook in
the project's kernel with the parameters it declares (its cell tagged ``parameters``)
filled from ``params.yaml`` under the active profile, writes the executed copy to
``reports/notebooks/<name>.ipynb`` and renders ``reports/<name>.html`` with figures
embedded. When the notebook raises, both are still written (the traceback is in them) and
the command exits non-zero, so DVC marks the stage failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import papermill
from jupyter_client.kernelspec import KernelSpecManager
from nbconvert import HTMLExporter

from bloodcells.config import load_params
from bloodcells.paths import project_root, reports_dir
from bloodcells.timing import record_stage_time

KERNEL_ENV = "BLOODCELLS_KERNEL"
DEFAULT_KERNEL = "bloodcells"


class StageFailed(RuntimeError):
    """The notebook raised; its executed copy and report hold the traceback."""


def kernel_name() -> str:
    """The Jupyter kernel of the project's environment, or a clear error if missing."""
    name = os.environ.get(KERNEL_ENV, DEFAULT_KERNEL)
    if name not in KernelSpecManager().find_kernel_specs():
        raise StageFailed(
            f"Jupyter kernel '{name}' is not installed. Run `make setup` (it registers the "
            f"project's .venv as kernel '{DEFAULT_KERNEL}'), or set {KERNEL_ENV} to an "
            "installed kernel that has the bloodcells package."
        )
    return name


def notebook_parameters(notebook: Path, params: dict) -> dict:
    """The params.yaml sections that the notebook's ``parameters`` cell declares."""
    declared = papermill.inspect_notebook(str(notebook))
    return {name: params[name] for name in declared if name in params}


# TensorFlow's native start-up lines (oneDNN notice, "no CUDA drivers", cuInit), written
# to stderr by absl before Python can configure logging; TF_CPP_MIN_LOG_LEVEL does not
# silence them. They say nothing about the study, so reports leave them out (the executed
# notebook under reports/notebooks/ keeps every line).
NATIVE_LOG_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.]+:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)


def drop_native_logs(nb):
    """``nb`` without TensorFlow's native log lines in its stderr outputs (in place)."""
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = out["text"].splitlines(keepends=True)
                kept = [line for line in lines if not NATIVE_LOG_LINE.match(line)]
                if not "".join(kept).strip():
                    continue
                out["text"] = "".join(kept)
            outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    return nb


def render_html(executed: Path, html: Path) -> Path:
    """Render an executed notebook to standalone HTML, images embedded as data URIs."""
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    # No external scripts: the report must open offline, with nothing for a browser to fetch.
    exporter.mathjax_url = ""
    exporter.require_js_url = ""
    nb = drop_native_logs(nbformat.read(executed, as_version=4))
    body, _ = exporter.from_notebook_node(nb)
    html.write_text(body, encoding="utf-8")
    return html


def run_notebook(notebook: Path, params: dict | None = None, out_root: Path | None = None) -> Path:
    """Execute ``notebook`` with its parameters and render its report; return the HTML path."""
    root = project_root()
    notebook = notebook if notebook.is_absolute() else root / notebook
    if not notebook.is_file():
        raise FileNotFoundError(f"Notebook {notebook} does not exist.")
    params = params if params is not None else load_params()
    out = out_root or reports_dir(root)
    executed = out / "notebooks" / notebook.name
    html = out / f"{notebook.stem}.html"
    executed.parent.mkdir(parents=True, exist_ok=True)
    parameters = notebook_parameters(notebook, params)
    kernel = kernel_name()
    # the kernel inherits this environment, TF_CPP_MIN_LOG_LEVEL too (bloodcells/__init__.py)
    t0 = time.perf_counter()
    failure = None
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=parameters,
            kernel_name=kernel,
            cwd=str(root),
            progress_bar=False,
            log_output=True,
        )
    except papermill.PapermillExecutionError as exc:
        failure = exc
    if executed.is_file():
        render_html(executed, html)
    seconds = time.perf_counter() - t0
    if failure is not None:
        raise StageFailed(
            f"{notebook.name} failed in cell {failure.exec_count}: {failure.ename}: "
            f"{failure.evalue}\nThe executed notebook with its traceback: {executed}\n"
            f"Its report: {html}"
        ) from failure
    record_stage_time(notebook.stem, seconds, root)
    print(f"{notebook.name}: executed in {seconds:.1f} s -> {html}")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a notebook as a DVC stage.")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--profile", help="override params.yaml's profile")
    args = parser.parse_args(argv)
    # papermill logs each cell's output (Keras's per-epoch progress among it) at INFO.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run_notebook(args.notebook, load_params(profile=args.profile))
    except (StageFailed, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
