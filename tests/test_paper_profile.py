"""End to end: the ``paper`` profile (issue 15), the DAG on the sample at the paper's image
sizes (128 and 224 px), with its heads, frozen parts, optimizers, balance and
``preprocess_input``, one epoch each and no ImageNet weights (``PAPER_ON_SAMPLE`` in
conftest.py; the ``paper_dag`` fixture runs ``dvc repro`` in a copy of its own), every stage
(docs/decisions/013).
The ImageNet path's offline error is tests/test_models.py's."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bloodcells.config import load_params
from tests.test_smoke_dag import FAMILY_REPORTS, assert_family_report

pytestmark = [pytest.mark.e2e, pytest.mark.paper]

#: every notebook's report
REPORTS = [p.stem for p in sorted(Path(__file__).parents[1].glob("notebooks/*.ipynb"))]


def test_every_stage_of_the_paper_profile_ran_and_its_reports_render(paper_dag):
    out = subprocess.run(
        [str(paper_dag / ".venv/bin/dvc"), "status", "--json"],
        cwd=paper_dag,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {}, out.stdout  # every stage ran and is current
    for name in [*REPORTS, "index"]:
        html = (paper_dag / f"reports/{name}.html").read_text()
        assert "Traceback" not in html, name
    summary = json.loads((paper_dag / "metrics/summary.json").read_text())
    assert summary, "the comparison summarised nothing"


def test_each_family_trained_with_the_papers_recipe_at_the_papers_size(paper_dag):
    params = load_params(paper_dag / "params.yaml")
    assert params["profile"] == "paper"
    sizes = set()
    for key in FAMILY_REPORTS:
        entry = params["models"][key]
        metrics = json.loads((paper_dag / f"metrics/{key}.json").read_text())
        variants = [v for v in metrics if v.startswith(key) and isinstance(metrics[v], dict)]
        optimizers = set()
        for variant in variants:
            record = json.loads((paper_dag / f"models/{key}/{variant}/run.json").read_text())
            assert record["image_size"] == entry["image_size"], (key, variant)
            assert record["weights"] == "none" and record["config"]["epochs"] == 1, (key, variant)
            if key not in ("hybrid", "supcon"):
                cfg = record["config"]
                for setting in ("frozen_fraction", "dense_units", "dropout", "balance"):
                    expected = entry.get(setting, params["train"][setting])  # the family's, or
                    assert cfg[setting] == expected, (key, setting)  # the shared default
            optimizers.add(record["optimizer"])
            sizes.add(record["image_size"])
        assert optimizers == set(entry["optimizers"]), key
    assert sizes == {128, 224}


@pytest.mark.parametrize(("key", "notebook"), FAMILY_REPORTS.items())
def test_paper_family_report_shows_its_measured_numbers(paper_dag, key, notebook):
    assert_family_report(paper_dag, key, notebook)
