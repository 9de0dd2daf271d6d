# Used by `make lab`: notebooks are saved without outputs or execution counts, so looking
# at a notebook in JupyterLab never changes the file DVC hashes for its stage.
from bloodcells.notebooks import pre_save_hook

c = get_config()  # noqa: F821
c.FileContentsManager.pre_save_hook = pre_save_hook
c.ServerApp.ip = "127.0.0.1"
