# Used by `make lab`: notebooks are saved without outputs or execution counts, so looking
# at a notebook in JupyterLab never changes the file DVC hashes for its stage.
from pathlib import Path

from bloodcells.notebooks import pre_save_hook

c = get_config()  # noqa: F821
c.FileContentsManager.pre_save_hook = pre_save_hook
c.ServerApp.ip = "127.0.0.1"
# The project's JupyterLab defaults (jupyter/settings/overrides.json): no "Would you like
# to get notified about official Jupyter news?" prompt and no update check, which would
# also try to reach the internet.
c.LabApp.app_settings_dir = str(Path(__file__).resolve().parent / "jupyter" / "settings")
