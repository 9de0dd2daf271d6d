"""Notebooks are committed clean, declare one parameters cell, and stages run them."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from bloodcells import stage
from bloodcells.notebooks import clean_notebook, dumps, pre_save_hook
from tests.conftest import fresh_python

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_clean_with_one_parameters_cell(path):
    text = path.read_text()
    assert dumps(clean_notebook(json.loads(text))) == text, f"run `make clean-notebooks`: {path}"
    nb = json.loads(text)
    tagged = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1


def test_save_hook_strips_outputs_so_the_file_is_unchanged():
    path = NOTEBOOKS[0]
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
            cell["execution_count"] = 3
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7"}
    model = {"type": "notebook", "content": nb}
    pre_save_hook(model)
    assert dumps(model["content"]) == path.read_text()


def make_notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    param = nbformat.v4.new_code_cell("profile = None\npreprocess = None\nother = 1")
    param.metadata["tags"] = ["parameters"]
    nb.cells = [param, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def test_runner_injects_declared_sections_and_renders_html(tmp_path):
    nb = make_notebook(tmp_path / "90_ok.ipynb", "print('seed', preprocess['seed'], other)")
    params = {"profile": "smoke", "preprocess": {"seed": 42}, "data": {"x": 1}}
    html = stage.run_notebook(nb, params, out_root=tmp_path / "reports")
    assert html == tmp_path / "reports" / "90_ok.html"
    executed = (tmp_path / "reports" / "notebooks" / "90_ok.ipynb").read_text()
    assert "seed 42 1" in executed
    assert '"data"' not in executed  # only declared sections are passed
    assert "seed 42 1" in html.read_text()


def test_failing_notebook_fails_the_stage_and_keeps_the_traceback(tmp_path):
    nb = make_notebook(tmp_path / "91_bad.ipynb", "raise ValueError('broken on purpose')")
    with pytest.raises(stage.StageFailed, match="broken on purpose"):
        stage.run_notebook(nb, {"profile": "smoke"}, out_root=tmp_path / "reports")
    executed = tmp_path / "reports" / "notebooks" / "91_bad.ipynb"
    assert "broken on purpose" in executed.read_text()
    assert "broken on purpose" in (tmp_path / "reports" / "91_bad.html").read_text()


def test_missing_kernel_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(stage.KERNEL_ENV, "no-such-kernel")
    with pytest.raises(stage.StageFailed, match="make setup"):
        stage.kernel_name()


def test_report_leaves_out_tensorflow_native_log_lines(tmp_path):
    native = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795666914.729762   12332 port.cc:153] oneDNN custom operations are on.\n"
        "E0000 00:00:1795666916.010899   12332 cuda_platform.cc:52] failed call to cuInit\n"
    )
    warning = "epoch_iterator.py:164: UserWarning: Your input ran out of data\n"
    cell = nbformat.v4.new_code_cell("import tensorflow")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=native),
        nbformat.v4.new_output("stream", name="stderr", text=native + warning),
        nbformat.v4.new_output("stream", name="stdout", text="I0000 stdout is the study's\n"),
    ]
    executed = tmp_path / "run.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), executed)
    html = stage.render_html(executed, tmp_path / "run.html").read_text()
    assert "oneDNN" not in html and "cuInit" not in html and "absl" not in html
    assert "Your input ran out of data" in html and "stdout is the study" in html
    assert "oneDNN" in executed.read_text()  # the executed notebook keeps every line


#: the notebook whose imports need TensorFlow (SupCon's layers); 13 loads it when it runs
#: the models, not when it starts
NEED_TENSORFLOW = {"11_supcon.ipynb"}


def test_report_notebooks_start_without_tensorflow():
    """Every module a report notebook imports, imported in a fresh interpreter, leaves
    TensorFlow unloaded (about 10 s per stage on a 2-core AVX2 CPU; decision 019), except
    SupCon's, which does load it: the check can fail."""
    import ast

    def imported(path: Path) -> list[str]:
        nb = nbformat.read(path, as_version=4)
        tree = ast.parse("\n".join(c.source for c in nb.cells if c.cell_type == "code"))
        mods = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "bloodcells":
                mods += [f"bloodcells.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bloodcells"):
                mods.append(node.module)
        return sorted(set(mods))

    script = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "print('tensorflow' in sys.modules)\n"
    )

    def loads_tensorflow(mods: list[str]) -> bool:
        return fresh_python(script, *mods) == "True"

    imports = {path.name: imported(path) for path in NOTEBOOKS}
    assert all(imports.values()), imports
    # the others' modules all together (none loads it, or the union would), then each of
    # those that need it
    rest = sorted(
        {m for name, mods in imports.items() if name not in NEED_TENSORFLOW for m in mods}
    )
    assert not loads_tensorflow(rest), rest
    assert all(loads_tensorflow(imports[name]) for name in NEED_TENSORFLOW)
