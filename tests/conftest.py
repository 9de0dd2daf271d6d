"""Shared fixtures: the real PBC sample from ../shared/datasets/pbc-sample."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bloodcells import preprocess

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list) -> None:
    """Unit tests first; then those that read the ``paper`` profile's run; then those that
    read the snapshot of the README's project taken when its ``make repro`` ended (the one
    marked ``edits`` first: it edits and restores that copy), while the README's later
    blocks go on; then those that read the README's whole run; last the one that compares
    it with the independent rerun of training stages. The runs go on in the background
    from the start (see :func:`smoke_in_background`)."""

    def stage(item) -> tuple[int, bool]:
        needs = set(item.fixturenames)
        readme, dag = bool(needs & README_FIXTURES), bool(needs & RERUN_FIXTURES)
        paper, snap = bool(needs & PAPER_FIXTURES), bool(needs & SNAPSHOT_FIXTURES)
        group = 5 if readme and dag else 4 if readme else 3 if snap else 2 if paper else int(dag)
        return group, item.get_closest_marker("edits") is None

    items.sort(key=stage)


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


def fresh_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """The last line ``code`` prints in a fresh interpreter (with ``args`` as ``sys.argv[1:]``),
    run from the project root: this one has long since imported TensorFlow, which reads
    its settings once, when first imported."""
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=ROOT,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1]


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
    on (not its virtual environment: a newcomer has a Python, not our .venv), a git
    identity, which a person has, and ``ONEDNN_MAX_CPU_ISA`` where it is set."""
    import sys

    python = Path(sys.base_prefix) / "bin"
    who = {"GIT_AUTHOR_NAME": "newcomer", "GIT_AUTHOR_EMAIL": "newcomer@localhost"}
    who |= {"GIT_COMMITTER_NAME": "newcomer", "GIT_COMMITTER_EMAIL": "newcomer@localhost"}
    # the oneDNN cap of a run measured as the reference machine (README: Measuring) holds
    # for the newcomer too: an AVX2 CPU has no AVX-512 in any shell
    cap = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA",) if k in os.environ}
    return {
        "HOME": os.environ.get("HOME", "/root"),
        "PATH": f"{python}:{SYSTEM_PATH}",
        **who,
        **cap,
    }


def project_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


#: what the README says to run -> what the suite runs instead, and only these
STAND_INS = {"cd ../bloodcells-copy && make setup": "cd ../bloodcells-copy && ln -s {venv} .venv"}

#: fixtures that need the README's run of the smoke DAG, or the independent rerun
README_FIXTURES = {"readme_run", "smoke_project"}
#: the fixture of the README's project as its ``make repro`` left it (a copy)
SNAPSHOT_FIXTURES = {"smoke_dag"}
RERUN_FIXTURES = {"smoke_rerun"}
#: the independent rerun's targets, with what they read (params, data, preprocess,
#: inputs): one of each way the study trains, where a nondeterministic kernel or an unseeded
#: generator would show. The CNN, the U-Net, a Keras application with its preprocessing
#: (VGG-16) and one with depthwise convolutions (MobileNet-V2), SupCon's two-view
#: contrastive training, the cross-validation's SMOTE folds, the shuffling study's orders
#: and the remedies' random stain layers. Not the four large backbones and the hybrid (the
#: same kernels, at 4 of the DAG's 19 minutes), the other CNN studies (the CNN's training
#: under other seeds and options), nor the notebooks and exports that read these outputs:
#: they run once, in the README's run (decision 019: on a 2-core AVX2 CPU the whole DAG
#: twice outgrew the README's run).
RERUN_TARGETS = (
    "train@cnn",
    "train@unet",
    "train@vgg16",
    "train@mobilenetv2",
    "train-supcon",
    "cross-validation",
    "shuffling",
    "train-robust",
)
#: the fixture that needs the ``paper`` profile's run on the sample
PAPER_FIXTURES = {"paper_dag"}

#: the ``paper`` profile (issue 15) cut to what proves its code paths on the sample: every
#: family at the paper's own size (128 or 224 px), head, frozen part, optimizers, balance
#: and preprocess_input, one epoch each and no ImageNet weights (nothing can be fetched
#: here); the studies' counts at the smoke profile's; batches of 8 (at 224 px an eager
#: DenseNet-201 step on 32 images peaks at 14 GB); 8 images for the shift benchmarks: before
#: ``inference.batch_size_for`` (batches sized by pixels: 20 images at 224 px) inference
#: stacked up to 256 images, and 9 x 16 shifted images at 224 px through DenseNet-201 took
#: more than the machine's 24 GB (export, on the sample's ties); kept small since
PAPER_ON_SAMPLE = {
    "preprocess": {"n_folds": 2},
    "train": {"deterministic": True, "graph_optimizer": False, "run_eagerly": True},
    "evaluate": {"n_bootstrap": 200},
    "cross_validation": {"folds": 2, "epochs": 1},
    "shuffling": {"seeds": [1, 2], "epochs": 1},
    "seed_spread": {"runs": ["cnn"], "seeds": [42, 43], "epochs": None},
    "robust_training": {
        "epochs": 1,
        "val_images": 16,
        "test_images": 16,
        "severities": [3],
        "remedies": ["none", "stain_normalisation"],
    },
    "generalisation": {
        "test_images": 8,
        "severities": [3],
        "adapt": {
            "per_class": 2,
            "unlabelled": 16,
            "epochs": 5,
            "shifts": ["stain (HED)"],
            "seeds": [0],
        },
    },
    "models": {
        **{k: {"epochs": 1, "batch_size": 8} for k in ("cnn", "unet")},
        **{
            k: {"epochs": 1, "weights": "none", "batch_size": 8}
            for k in ("resnet50", "vgg16", "densenet201", "mobilenetv2", "inceptionv3", "xception")
        },
        "hybrid": {"epochs": 1, "frozen_epochs": 1, "batch_size": 8},
        "supcon": {"epochs": 1, "classifier_epochs": 1, "batch_size": 8},
    },
}


def stand_ins(code: str) -> str:
    """``code`` with each :data:`STAND_INS` replacement made."""
    for said, run in STAND_INS.items():
        code = code.replace(said, run.format(venv=ROOT / ".venv"))
    return code


def overlay(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, mappings key by key (a copy)."""
    out = dict(base)
    for key, value in changes.items():
        mergeable = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = overlay(out[key], value) if mergeable else value
    return out


def smoke_copy(
    dest: Path, sample_dir: Path, profile: str = "smoke", changes: dict | None = None
) -> Path:
    """A fresh copy of the project at ``dest``: a git repository of its own, ``profile``
    active (its overlay with ``changes`` merged in), data from the sample, this session's
    ``.venv`` linked in."""
    for rel in project_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["profile"] = profile
    sample = {"data": {"sources": [{"path": str(sample_dir)}], "expect_complete": False}}
    active = params["profiles"][profile] or {}
    params["profiles"][profile] = overlay(active, overlay(changes or {}, sample))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".venv").symlink_to(ROOT / ".venv")
    # a fixed date makes every copy the same commit, whenever it is made: the exported
    # model and its card record the commit, and the two smoke runs must agree bit for bit
    stamp = "2025-01-01T00:00:00+00:00"
    env = newcomer_env() | {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "smoke"]):
        subprocess.run(["git", *cmd], cwd=dest, check=True, env=env)
    return dest


def snapshot(work: Path, dest: Path) -> Path:
    """A copy at ``dest`` of the smoke project ``work`` as it is now: its commit (``git
    clone``) with its current ``dvc.lock``, this session's ``.venv`` linked in, and its
    outputs checked out from ``work``'s DVC cache, which it shares (no second cache)."""
    dvc = str(ROOT / ".venv/bin/dvc")
    subprocess.run(["git", "clone", "-q", str(work), str(dest)], check=True, env=newcomer_env())
    shutil.copy2(work / "dvc.lock", dest / "dvc.lock")
    (dest / ".venv").symlink_to(ROOT / ".venv")
    subprocess.run([dvc, "cache", "dir", "--local", str(work / ".dvc/cache")], cwd=dest, check=True)
    subprocess.run([dvc, "checkout", "--quiet"], cwd=dest, check=True)
    return dest


#: how the README's block that runs the study begins
REPRO_BLOCK = "make repro"


def repro_block(blocks: list[Block]) -> Block:
    """The README's block that runs the study (:data:`REPRO_BLOCK`)."""
    return next(b for b in blocks if b.code.startswith(REPRO_BLOCK))


def run_readme(work: Path, blocks: list[Block], after_repro=None) -> None:
    """Run every runnable block of ``blocks`` in ``work``, in order, each in a fresh
    ``bash -e`` with :func:`newcomer_env`; stop at the first that fails. ``after_repro()``
    is called when the ``make repro`` block has succeeded, before the next starts. Writes
    the blocks' times, exit statuses and output (head and tail) to
    ``reports/readme_run.json``."""
    env = newcomer_env()
    for block in blocks:
        if block.why_not_run:
            continue
        t0 = time.monotonic()
        # output to a file, not a pipe: a daemon a block leaves behind (DVC's queue worker
        # idles a minute before it exits) would hold a pipe open and the block with it
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(
                ["bash", "-e", "-c", stand_ins(block.code)],
                cwd=work,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=2400,  # make repro: about 20 min on a 2-core AVX2 CPU, sharing it
            )
            out.seek(0)
            block.output = out.read()
        block.seconds = time.monotonic() - t0
        block.returncode = done.returncode
        if done.returncode:
            break
        if after_repro is not None and block.code.startswith(REPRO_BLOCK):
            after_repro()
    timings = [
        {
            "line": b.line,
            "first_line": b.code.splitlines()[0],
            "seconds": round(b.seconds, 1),
            "returncode": b.returncode,
            # the sharing blocks' dvc pull, status and repro come first, a wide table last
            "output_head": b.output[:3000],
            "output_tail": b.output[3000:][-3000:],
        }
        for b in blocks
        if b.returncode is not None
    ]
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "readme_run.json").write_text(json.dumps(timings, indent=1) + "\n")


#: the two smoke DAG runs, started together when the session starts (see
#: :func:`smoke_in_background`): {"readme": (thread, work, blocks, errors),
#: "rerun": (process, project, log)}
BACKGROUND: dict = {}


@pytest.fixture(scope="session", autouse=True)
def smoke_in_background(request, tmp_path_factory):
    """When a collected test needs them, start the README run and the independent rerun
    of training stages (``dvc repro --force`` of :data:`RERUN_TARGETS` in a copy of
    its own) at once, in the background: each mostly keeps one core busy, so they and the
    unit tests, which run first (:func:`pytest_collection_modifyitems`), share the two cores
    instead of queueing. The README's run is the longest chain, so the rerun runs at a
    lower priority (``nice 10``) and yields the cores to it."""
    needs = set().union(*(item.fixturenames for item in request.session.items))
    if needs & (README_FIXTURES | SNAPSHOT_FIXTURES | RERUN_FIXTURES | PAPER_FIXTURES):
        sample_dir = request.getfixturevalue("sample_dir")
    if needs & (README_FIXTURES | SNAPSHOT_FIXTURES):
        work = smoke_copy(tmp_path_factory.mktemp("readme") / "bloodcells", sample_dir)
        blocks, errors = readme_blocks(), []
        snap = {
            "path": tmp_path_factory.mktemp("dag") / "bloodcells",
            "taken": False,
            "ready": threading.Event(),  # set when taken, or when the README's run ends
        }
        BACKGROUND["snapshot"] = snap

        def take_snapshot() -> None:
            snapshot(work, snap["path"])
            snap["taken"] = True
            snap["ready"].set()

        def run() -> None:
            try:
                run_readme(work, blocks, take_snapshot)
            except BaseException as exc:  # re-raised by readme_run in the test's thread
                errors.append(exc)
            finally:  # its waiters wake also when make repro failed before it
                snap["ready"].set()

        thread = threading.Thread(target=run, name="readme", daemon=True)
        thread.start()
        BACKGROUND["readme"] = (thread, work, blocks, errors)
        # the README's run is the critical chain: this thread (the tests, and what they
        # start from here on) yields to it. On Linux a nice value is a thread's, so the
        # README's thread, started above, and its commands keep theirs (decision 019).
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + 5)
    if needs & RERUN_FIXTURES:
        project = smoke_copy(tmp_path_factory.mktemp("rerun") / "bloodcells", sample_dir)
        BACKGROUND["rerun"] = background_repro(project, 10, "--force", *RERUN_TARGETS)
    if needs & PAPER_FIXTURES:
        project = smoke_copy(
            tmp_path_factory.mktemp("paper") / "bloodcells", sample_dir, "paper", PAPER_ON_SAMPLE
        )
        BACKGROUND["paper"] = background_repro(project, 10)
    yield
    for name in ("rerun", "paper"):
        if name in BACKGROUND:
            process, _, log = BACKGROUND[name]
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
            log.close()


def background_repro(project: Path, nice: int, *args: str) -> tuple:
    """``dvc repro`` in ``project``, started in the background at priority ``nice``, its
    output to ``repro.log`` beside the project: (process, project, log)."""
    log = open(project.parent / "repro.log", "w")  # noqa: SIM115 - closed by the caller
    process = subprocess.Popen(
        ["nice", "-n", str(nice), str(ROOT / ".venv/bin/dvc"), "repro", *args],
        cwd=project,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, project, log


def finished_repro(name: str, timeout: int) -> tuple[Path, str]:
    """Wait for the background run ``name``; its project and output, failing with the
    output's tail when it failed."""
    process, project, log = BACKGROUND[name]
    code = process.wait(timeout=timeout)
    log.flush()
    output = (project.parent / "repro.log").read_text()
    assert code == 0, output[-6000:]
    return project, output


@pytest.fixture(scope="session")
def readme_run() -> tuple[Path, list[Block]]:
    """A fresh smoke copy of the project (:func:`smoke_copy`) in which every runnable
    README block has run in order (:func:`run_readme`, started with the session). This
    session's ``.venv`` stands in for the one ``make setup`` would build (a symlink;
    ``make`` sees it up to date), in the README's second checkout too (:data:`STAND_INS`):
    ``.ci/run`` has just built it with ``make setup`` from a clean clone, and a second
    3 GB build would only repeat that."""
    thread, work, blocks, errors = BACKGROUND["readme"]
    thread.join(timeout=3600)
    assert not thread.is_alive(), "the README run took over an hour"
    if errors:
        raise errors[0]
    return work, blocks


@pytest.fixture(scope="session")
def smoke_rerun() -> tuple[Path, str]:
    """A fresh smoke project in which :data:`RERUN_TARGETS` and what they read ran
    independently of the README's run (``dvc repro --force``, started with the session)."""
    return finished_repro("rerun", timeout=2400)


@pytest.fixture(scope="session")
def paper_dag() -> Path:
    """A copy of the project under the ``paper`` profile cut to the sample
    (:data:`PAPER_ON_SAMPLE`), every stage run once (``dvc repro``, started with the
    session)."""
    return finished_repro("paper", timeout=2400)[0]


@pytest.fixture(scope="session")
def smoke_dag() -> Path:
    """The smoke project in which every stage has run once: a copy of the README's as its
    ``make repro`` left it (:func:`snapshot`), ready while the README's later blocks go on,
    so the tests that read or edit it do not wait for them. Its training stages of each
    kind, rerun independently, give the same bytes
    (``test_each_kind_of_training_run_twice_gives_the_same_outputs``)."""
    _, _, blocks, errors = BACKGROUND["readme"]
    snap = BACKGROUND["snapshot"]
    snap["ready"].wait()
    if not snap["taken"]:
        if errors:
            raise errors[0]
        pytest.fail(f"the README's make repro failed:\n{repro_block(blocks).output[-6000:]}")
    return snap["path"]


@pytest.fixture(scope="session")
def smoke_project(readme_run) -> Path:
    """The project after the README's `make repro` under the smoke profile."""
    work, blocks = readme_run
    repro = repro_block(blocks)
    assert repro.returncode == 0, repro.output[-6000:]
    return work
