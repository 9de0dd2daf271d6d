"""Shared fixtures: the real PBC sample from ../shared/datasets/pbc-sample."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bloodcells import preprocess

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list) -> None:
    """Tests marked ``rerun`` go last: they wait for the second run of the smoke DAG,
    which runs in the background while the others run (see :func:`start_rerun`)."""
    items.sort(key=lambda item: item.get_closest_marker("rerun") is not None)


SAMPLE = Path(
    os.environ.get("PBC_SAMPLE", ROOT.parent / "shared/datasets/pbc-sample/PBC_dataset_normal_DIB")
).resolve()
PRE = {
    "workers": 2,
    "test_size": 0.3,
    "val_size": 0.2,
    "n_folds": 3,
    "seed": 42,
    "near_duplicate_max_distance": 4,
    "image_sizes": [32],
}


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not SAMPLE.is_dir():
        pytest.fail(f"The PBC sample is missing at {SAMPLE}; set PBC_SAMPLE to its folder.")
    return SAMPLE


@pytest.fixture(scope="session")
def built(sample_dir) -> tuple[pd.DataFrame, dict]:
    """Manifest and quality record of the sample (computed once per session)."""
    return preprocess.build_manifest(sample_dir, PRE)


@pytest.fixture()
def sample_copy(sample_dir, tmp_path) -> Path:
    """A writable copy of the sample, laid out as the dataset folder."""
    dest = tmp_path / "src" / "PBC_dataset_normal_DIB"
    shutil.copytree(sample_dir, dest)
    return dest


def mini_project(root: Path, manifest: pd.DataFrame, sample_dir: Path, size: int = 32) -> Path:
    """Lay out a minimal project root: the sample's manifest and its arrays at ``size`` px."""
    preprocess.write_manifest(manifest, root / "data/interim/manifest.csv")
    preprocess.cache_arrays(manifest, sample_dir, size, root / f"data/processed/{size}", workers=2)
    return root


# --- The README, executed: the smoke project every end-to-end test reads -------------------

#: what a newcomer's fresh shell has: no virtual environment on PATH, nothing of ours
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOT_RUN = re.compile(r"<!-- not run by tests/test_readme\.py: (?P<why>[^>]+?) -->\s*$")


@dataclass
class Block:
    """One ```bash block of the README, and what running it gave."""

    line: int
    code: str
    why_not_run: str | None = None
    returncode: int | None = None
    output: str = ""
    seconds: float = 0.0


def readme_blocks(readme: Path = ROOT / "README.md") -> list[Block]:
    """Every ```bash block of the README, in order; those right after a
    ``<!-- not run by tests/test_readme.py: why -->`` line carry their reason."""
    blocks, lines = [], readme.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = lines.index("```", i + 1)
            marker = NOT_RUN.search(lines[i - 1]) if i else None
            why = marker["why"] if marker else None
            blocks.append(Block(i + 1, "\n".join(lines[i + 1 : end]) + "\n", why))
            i = end
        i += 1
    return blocks


def newcomer_env() -> dict[str, str]:
    """`env -i` plus HOME, a system PATH with the Python 3.11 installation this suite runs
    on (not its virtual environment: a newcomer has a Python, not our .venv), and a git
    identity, which a person has."""
    import sys

    python = Path(sys.base_prefix) / "bin"
    who = {"GIT_AUTHOR_NAME": "newcomer", "GIT_AUTHOR_EMAIL": "newcomer@localhost"}
    who |= {"GIT_COMMITTER_NAME": "newcomer", "GIT_COMMITTER_EMAIL": "newcomer@localhost"}
    return {"HOME": os.environ.get("HOME", "/root"), "PATH": f"{python}:{SYSTEM_PATH}", **who}


def project_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory, sample_dir) -> tuple[Path, list[Block]]:
    """A fresh copy of the project (a git repository, profile ``smoke``, data from the
    sample) in which every runnable README block is run in order, each in a fresh
    ``bash -e`` with :func:`newcomer_env`. This session's ``.venv`` stands in for the one
    ``make setup`` would build (a symlink; ``make`` sees it up to date); the README's
    second checkout builds its own. Stops at the first block that fails."""
    work = tmp_path_factory.mktemp("readme") / "bloodcells"
    for rel in project_files():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, work / rel)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["profiles"]["smoke"]["data"]["sources"] = [{"path": str(sample_dir)}]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / ".venv").symlink_to(ROOT / ".venv")
    env = newcomer_env()
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "smoke"]):
        subprocess.run(["git", *cmd], cwd=work, check=True, env=env)
    blocks = readme_blocks()
    for block in blocks:
        if block.why_not_run:
            continue
        t0 = time.monotonic()
        done = subprocess.run(
            ["bash", "-e", "-c", block.code],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
        block.seconds = time.monotonic() - t0
        block.returncode, block.output = done.returncode, done.stdout + done.stderr
        if done.returncode:
            break
        if block.code.startswith("make repro"):
            start_rerun(work, work.parent.parent / "rerun" / "bloodcells")
    timings = [
        {"line": b.line, "first_line": b.code.splitlines()[0], "seconds": round(b.seconds, 1)}
        for b in blocks
        if b.returncode is not None
    ]
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "readme_run.json").write_text(json.dumps(timings, indent=1) + "\n")
    return work, blocks


def _no_dvc_cache(folder: str, names: list[str]) -> list[str]:
    return ["cache", "tmp"] if Path(folder).name == ".dvc" else []


#: the background second run of the smoke DAG: {"process", "project", "log"}
RERUN: dict = {}


def start_rerun(project: Path, dest: Path) -> None:
    """Copy ``project`` right after its ``dvc repro`` (without DVC's cache, with nothing to
    resume) and run every stage again there, ``dvc repro --force``, in the background."""
    shutil.copytree(project, dest, symlinks=True, ignore=_no_dvc_cache)
    shutil.rmtree(dest / ".cache", ignore_errors=True)
    log = open(dest.parent / "rerun.log", "w")  # noqa: SIM115 - closed by the waiter
    dvc = Path(ROOT / ".venv/bin/dvc")
    process = subprocess.Popen(
        [str(dvc), "repro", "--force"], cwd=dest, stdout=log, stderr=subprocess.STDOUT
    )
    RERUN.update(process=process, project=dest, log=log)


@pytest.fixture(scope="session")
def smoke_rerun(readme_run) -> tuple[Path, str]:
    """The smoke project with every stage run a second time (``dvc repro --force`` in a
    copy, started in the background when the README's ``make repro`` finished)."""
    assert RERUN, "the README run did not get as far as starting the rerun"
    code = RERUN["process"].wait(timeout=2400)
    RERUN["log"].close()
    output = (RERUN["project"].parent / "rerun.log").read_text()
    assert code == 0, output[-6000:]
    return RERUN["project"], output


@pytest.fixture(scope="session")
def smoke_project(readme_run) -> Path:
    """The project after the README's `make repro` under the smoke profile."""
    work, blocks = readme_run
    repro = next(b for b in blocks if b.code.startswith("make repro"))
    assert repro.returncode == 0, repro.output[-6000:]
    return work
