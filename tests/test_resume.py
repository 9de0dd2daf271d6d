"""An interrupted run, killed by a real signal mid-epoch and started again in a new
process, ends with the same weights and history as a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bloodcells import experiment, train
from bloodcells.config import load_params
from tests.conftest import ROOT, mini_project

SCRIPT = textwrap.dedent(
    """
    import os
    import signal
    import sys
    from pathlib import Path

    import keras
    import numpy as np

    from bloodcells import experiment, train
    from bloodcells.config import load_params

    root, work, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    kill_epoch = int(sys.argv[4])


    class KeepLast(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            np.savez(out + ".last.npz", *self.model.get_weights())


    class KillMidEpoch(keras.callbacks.Callback):
        # SIGTERM to this process after the first batch of epoch `kill_epoch` (-1: never)
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == kill_epoch and batch == 0:
                os.kill(os.getpid(), signal.SIGTERM)


    params = load_params(root / "params.yaml", profile="smoke")
    cfg = train.family_config(params, "cnn", epochs=3, deterministic=True)
    data = experiment.load_splits(32, root)
    result = train.train_model(
        cfg, *data["train"], *data["val"], work / "run", work / "live",
        callbacks=[KillMidEpoch(), KeepLast()], verbose=0,
    )
    np.savez(out, *result.model.get_weights())
    result.history.to_csv(out + ".csv")
    """
)


def _train(root: Path, work: Path, out: Path, kill_epoch: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'lib'}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root), str(work), str(out), str(kill_epoch)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory, built, sample_dir):
    root = mini_project(tmp_path_factory.mktemp("resume"), built[0], sample_dir)
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return root


def test_a_killed_run_resumes_to_the_same_weights(project, tmp_path):
    whole = _train(project, tmp_path / "whole", tmp_path / "whole.npz", kill_epoch=-1)
    assert whole.returncode == 0, whole.stderr[-3000:]

    # stopped in the last epoch: there is no backup of it (train.backup_until_last_epoch),
    # so the run resumes from the one before
    killed = _train(project, tmp_path / "cut", tmp_path / "cut.npz", kill_epoch=2)
    assert killed.returncode == -signal.SIGTERM, killed.stderr[-3000:]
    backup = tmp_path / "cut" / "run" / "backup"
    assert train.completed_epochs(tmp_path / "cut" / "run") == 2 and backup.exists()
    resumed = _train(project, tmp_path / "cut", tmp_path / "cut.npz", kill_epoch=-1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    for kept in ("npz", "npz.last.npz"):  # the best epoch's weights, the last epoch's
        a, b = np.load(tmp_path / f"whole.{kept}"), np.load(tmp_path / f"cut.{kept}")
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{kept}: {name}")
    ha = pd.read_csv(tmp_path / "whole.npz.csv", index_col=0)
    hb = pd.read_csv(tmp_path / "cut.npz.csv", index_col=0)
    pd.testing.assert_frame_equal(ha, hb)  # epochs 0, 1, 2 in both: the counter continued
    assert list(hb.index) == [0, 1, 2]


def test_the_training_key_covers_data_config_and_code(project, monkeypatch):
    params = load_params(ROOT / "params.yaml", profile="smoke")
    cfg = train.family_config(params, "cnn")
    key = experiment.training_key(cfg, project)
    assert key == experiment.training_key(cfg, project)
    assert key != experiment.training_key(train.family_config(params, "cnn", seed=7), project)
    assert key != experiment.training_key(cfg, project, study="cv")
    manifest = project / "data/interim/manifest.csv"
    original = manifest.read_text()
    try:
        rows = original.splitlines(keepends=True)
        manifest.write_text("".join(rows[:-1]))  # one image fewer: other data
        assert key != experiment.training_key(cfg, project)
    finally:
        manifest.write_text(original)
    monkeypatch.setattr(experiment, "code_hash", lambda: "other code")
    assert key != experiment.training_key(cfg, project)
    dirs = experiment.run_dirs("cnn", "cnn", key, project)
    assert dirs["work"].name == f"cnn-{key}"
