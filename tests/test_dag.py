"""The DAG under the smoke profile: training stages run twice give the same bytes,
and an edit reruns exactly the stages that read what it changed (docs/decisions/010).

The first compares the README's smoke run with a second, independent run of one training
stage of each kind and what they read, in a fresh copy (``dvc repro --force`` of
``conftest.RERUN_TARGETS``; the ``smoke_rerun`` fixture, in the background while the other
tests run); the second edits the README's project and restores it after each edit.
The hashes of the two runs and the table of edits are written to ``reports/dag_rerun.md``
and ``reports/dag_invalidation.md``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import RERUN_TARGETS, ROOT

pytestmark = [pytest.mark.e2e]

DVC = str(Path(sys.executable).parent / "dvc")

#: Outputs that hold the clock, by design or by their format (decision 010).
NOT_STABLE = ("metrics/timings/", "reports/notebooks/", "reports/index.html")


def not_stable(path: str) -> bool:
    return path.startswith(NOT_STABLE) or (path.startswith("reports/") and path.endswith(".html"))


def dvc(cwd: Path, *args: str) -> str:
    done = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (
        f"dvc {' '.join(args)}:\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
    )
    return done.stdout


def lock_hashes(project: Path, stages: set[str] | None = None) -> dict[str, str]:
    """``{output path: md5}`` of every output ``dvc.lock`` records for ``stages`` (all when
    None)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for name, stage in lock["stages"].items()
        if stages is None or name in stages
        for out in stage.get("outs", [])
    }


@pytest.mark.rerun
def test_each_kind_of_training_run_twice_gives_the_same_outputs(smoke_project, smoke_rerun):
    project, log = smoke_rerun
    # the targets reran, with what they read, and nothing else (the copy's dvc.lock also
    # holds the committed lock's other stages: the log says what ran)
    ran = set(re.findall(r"Running stage '([^']+)'", log))
    assert ran == {*RERUN_TARGETS, "params", "data", "preprocess", "inputs"}
    assert log.count("Running stage") == len(ran)
    first, second = lock_hashes(smoke_project, ran), lock_hashes(project, ran)
    assert second.keys() == first.keys()
    stable = sorted(p for p in second if not not_stable(p))
    rows = [
        f"| `{p}` | {first[p][:10]} | {second[p][:10]} | {first[p] == second[p]} |"
        for p in sorted(second)
    ]
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "dag_rerun.md").write_text(
        "| output | first run | second run | equal |\n| --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + "\n"
    )
    differ = [p for p in stable if first[p] != second[p]]
    assert not differ, f"not reproduced bit for bit: {differ}"
    # the models, predictions and metrics are among the stable ones, not excused
    for path in (
        "models/cnn",
        "models/vgg16",
        "models/mobilenetv2",
        "models/supcon",
        "models/shuffling",
        "models/cross_validation",
        "models/robust",
        "data/processed",
        "dvclive/supcon",
    ):
        assert path in stable
    assert any(p.startswith("metrics/timings/") and first[p] != second[p] for p in second)


def _edit_yaml(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(project: Path) -> None:
        params = yaml.safe_load((project / "params.yaml").read_text())
        change(params)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    return apply


def _append(rel: str, text: str = "\n# an edit\n") -> Callable[[Path], None]:
    def apply(project: Path) -> None:
        with open(project / rel, "a") as fh:
            fh.write(text)

    return apply


def _smoke(section: str, *keys: str, value) -> Callable[[dict], None]:
    def change(params: dict) -> None:
        node = params["profiles"]["smoke"].setdefault(section, {})
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return change


#: (edit, how to apply it, stages to run first besides `params`, then what must be stale)
EDITS = [
    (
        "an inactive profile: profiles.paper.models.cnn.epochs",
        _edit_yaml(lambda p: p["profiles"]["paper"]["models"]["cnn"].update(epochs=11)),
        (),
        set(),
    ),
    (
        "a base value the active profile overrides: models.cnn.epochs",
        _edit_yaml(lambda p: p["models"]["cnn"].update(epochs=30)),
        (),
        set(),
    ),
    (
        "report params: evaluate.n_bootstrap (active)",
        _edit_yaml(_smoke("evaluate", "n_bootstrap", value=150)),
        (),
        {
            *(f"report@{k}" for k in ("cnn", "unet", "resnet50", "vgg16", "densenet201")),
            *(f"report@{k}" for k in ("mobilenetv2", "inceptionv3", "xception")),
            "report-hybrid",
            "report-supcon",
            "report-robust",  # the test CIs of its conclusion
            "compare",
            "export",
            "site",  # the index lists each setting that differs from overnight's
        },
    ),
    (
        "report code: lib/bloodcells/paper.py",
        _append("lib/bloodcells/paper.py"),
        (),
        {
            *(f"report@{k}" for k in ("cnn", "unet", "resnet50", "vgg16", "densenet201")),
            *(f"report@{k}" for k in ("mobilenetv2", "inceptionv3", "xception")),
            "report-hybrid",
            "report-supcon",
            "compare",
            "paper-protocol",  # the shuffling verdicts compare the paper's gaps
        },
    ),
    (
        "a study's report code: lib/bloodcells/remedy_report.py",
        _append("lib/bloodcells/remedy_report.py"),
        (),
        {"report-robust"},  # not train-robust: DVC would delete and retrain every remedy
    ),
    (
        "plot code: lib/bloodcells/plots.py (preprocess rerun for real)",
        _append("lib/bloodcells/plots.py"),
        ("preprocess", "inputs"),
        {
            *(f"report@{k}" for k in ("cnn", "unet", "resnet50", "vgg16", "densenet201")),
            *(f"report@{k}" for k in ("mobilenetv2", "inceptionv3", "xception")),
            "report-hybrid",
            "report-supcon",
            "report-robust",
            "compare",
            "generalisation",
            "site",  # the preprocessing report it links changed
        },
    ),
    (
        "one family's key: models.cnn.epochs (active)",
        _edit_yaml(_smoke("models", "cnn", "epochs", value=3)),
        (),
        # the studies set their own epochs; the seed spread retrains the CNN's own recipe;
        # the index lists the setting beside overnight's (as it does each edit below)
        {"train@cnn", "report@cnn", "train-seeds", "site"},
    ),
    (
        "the seed spread's seeds: seed_spread.seeds (active)",
        _edit_yaml(_smoke("seed_spread", "seeds", value=[42, 43, 44])),
        (),
        {"train-seeds", "site"},  # the persistent runs of seeds 42 and 43 are reused
    ),
    (
        "the seed spread's report code: lib/bloodcells/seed_report.py",
        _append("lib/bloodcells/seed_report.py"),
        (),
        {"compare"},  # not train-seeds
    ),
    (
        "the compute-matched study's seeds: compute_matched.seeds (active)",
        _edit_yaml(_smoke("compute_matched", "seeds", value=[42, 43, 44])),
        (),
        # the persistent runs of seeds 42 and 43 are reused; the report reads the section
        {"train-matched", "compare", "site"},
    ),
    (
        "the compute-matched report code: lib/bloodcells/matched_report.py",
        _append("lib/bloodcells/matched_report.py"),
        (),
        {"compare"},  # not train-matched
    ),
    (
        "the changes the ablation trains: ablation.run (active)",
        _edit_yaml(_smoke("ablation", "run", value=["ema"])),
        (),
        # the base's and ema's persistent runs are reused, warmup's pruned; the report reads
        # the section; nothing else (README: `dvc exp run -S ablation.run=all` after a run)
        {"train-ablation", "compare", "site"},
    ),
    (
        "the ablation's report code: lib/bloodcells/ablation_report.py",
        _append("lib/bloodcells/ablation_report.py"),
        (),
        {"compare"},  # not train-ablation
    ),
    (
        "a study's setting: shuffling.epochs (active)",
        _edit_yaml(_smoke("shuffling", "epochs", value=2)),
        (),
        {"shuffling", "paper-protocol", "site"},
    ),
    (
        "a remedy study's setting: robust_training.epochs (active)",
        _edit_yaml(_smoke("robust_training", "epochs", value=2)),
        (),
        {"train-robust", "report-robust", "site"},
    ),
    (
        "a new cached size: preprocess.image_sizes + 64 (preprocess rerun for real)",
        _edit_yaml(_smoke("preprocess", "image_sizes", value=[32, 64, 80])),
        ("preprocess", "inputs"),
        {"compare", "site"},  # compare reads data/processed, site the preprocessing
        # report; no model uses 64 px, so no model is stale
    ),
]


@pytest.mark.edits
def test_an_edit_reruns_exactly_what_reads_it(smoke_dag):
    """Each edit on the README's run's project (``smoke_dag``): run the stages that
    resolve it (``params``, and for the data edits ``preprocess`` and ``inputs``), then
    ``dvc status`` names the stages that would rerun. Undone after each edit: ``git reset
    --hard`` (DVC stages ``dvc.lock`` as it writes it) and ``dvc checkout`` of the stages
    it ran, so the project ends as it began (checked once, at the end)."""
    project = smoke_dag
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "rerun",
        ],
        cwd=project,
        check=True,
    )
    # every tracked file as committed: `git reset --hard` alone leaves an edit in place when
    # git's stat check misses it (same size, same mtime second: an edit, a `dvc repro` and
    # the reset within one second on a fast CPU), so the bytes are written back too
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=project, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    committed = {rel: (project / rel).read_bytes() for rel in tracked if rel}
    rows = []
    for name, apply, first, expected in EDITS:
        apply(project)
        for stage in ("params", *first):
            dvc(project, "repro", "--single-item", stage)
        status = yaml.safe_load(dvc(project, "status", "--json")) or {}
        stale = set(status)
        rows.append(f"| {name} | {', '.join(sorted(stale)) or 'nothing'} |")
        assert stale == expected, name
        assert not any(s.startswith(("train", "preprocess", "data")) for s in stale - expected)
        subprocess.run(["git", "reset", "-q", "--hard", "HEAD"], cwd=project, check=True)
        for rel, content in committed.items():
            if (project / rel).read_bytes() != content:
                (project / rel).write_bytes(content)
        # only the stages it ran wrote outputs: 1.8 s a checkout instead of 4 s for all
        dvc(project, "checkout", "--force", "params", *first)
    # undone: a leftover of one edit would also have shown in the next edit's stale set
    assert yaml.safe_load(dvc(project, "status", "--json")) == {}, "after undoing the edits"
    (ROOT / "reports" / "dag_invalidation.md").write_text(
        "| edit | stages that would rerun (after resolving it) |\n| --- | --- |\n"
        + "\n".join(rows)
        + "\n"
    )
