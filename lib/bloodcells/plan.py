"""What each stage reads, resolved, in a file of its own: the DAG's exact invalidation.

``params.yaml`` holds the cpu defaults and every profile's overlay. A stage that listed
those sections as DVC params would rerun whenever any of them changed, the profiles nobody
runs included. Instead two small stages write, per consumer, exactly what it reads under
the active profile, and the consumers depend on those files:

* ``params`` (``python -m bloodcells.plan params``) resolves the active profile
  (:func:`bloodcells.config.load_params`) and writes ``build/params/<name>.json``;
  DVC tracks it on ``profile``, ``profiles.<active>``, ``profiles.overnight`` (the
  reports' index lists what the active profile cuts from it) and the base sections only.
* ``inputs`` (``python -m bloodcells.plan inputs``), after ``preprocess``, writes
  ``build/inputs/<key>.json``: the SHA-256 of every cached array a family trains on (at
  each size it uses) and of the manifest, so adding an image size retrains nothing that
  does not use it.

A file is rewritten only when its content changes, so its DVC hash moves exactly when
what its consumer reads moves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from bloodcells import ablation, matched, remedies, seeds, shift
from bloodcells.config import ParamsError, load_params
from bloodcells.paths import manifest_path, processed_dir, project_root

PARAMS_DIR = Path("build/params")
INPUTS_DIR = Path("build/inputs")

#: the profile whose settings the default one cuts (README, Profiles)
LARGEST_CPU_PROFILE = "overnight"

#: Keys of ``preprocess`` that shape the arrays or splits a model sees. ``image_sizes``
#: (which sizes are cached) and ``workers`` (how fast) do not.
SPLIT_KEYS = ("seed", "test_size", "val_size", "n_folds", "near_duplicate_max_distance")


def stage_params(params: dict, largest: dict) -> dict[str, dict]:
    """``{file name: what its consumer reads}`` for every consumer of params. ``largest``:
    the resolved overnight profile (:data:`LARGEST_CPU_PROFILE`), whose differences from
    this one the reports' index shows (what this profile cuts). Required: without it the
    index could not tell a profile that cuts nothing from one whose cuts went unread."""
    out = {
        "data": {"data": params["data"]},
        "preprocess": {"preprocess": params["preprocess"]},
        "evaluate": {"profile": params["profile"], "evaluate": params["evaluate"]},
        "compare": {
            "profile": params["profile"],
            "evaluate": params["evaluate"],
            "champion": params["champion"],
            matched.SECTION: params[matched.SECTION],
            ablation.SECTION: params[ablation.SECTION],
        },
        "site": {
            "profile": params["profile"],
            "cuts": differences(params, largest),
        },
        "generalisation": {
            "profile": params["profile"],
            "generalisation": shift.check_params(params["generalisation"]),
        },
    }
    split = {k: params["preprocess"][k] for k in SPLIT_KEYS}
    # what the `inputs` stage reads: which sizes each trainer reads, nothing else
    out["sizes"] = {key: sizes_used(params, key) for key in trainers(params)}
    for key, entry in params["models"].items():
        out[f"train-{key}"] = {
            "preprocess": split,
            "train": params["train"],
            "models": {key: entry},
        }
    remedies.check_params(params.get(remedies.SECTION), params["models"])
    for study in STUDIES:  # a study trains its family's recipe with settings of its own
        family = params[study]["family"]
        recipe = {k: v for k, v in params["models"][family].items() if k not in OVERRIDDEN}
        out[study] = {
            "preprocess": split,
            "train": params["train"],
            "models": {family: recipe},
            study: params[study],
        }
    section = seeds.check_params(params.get(seeds.SECTION), params["models"])
    out[seeds.SECTION] = {  # each seeded family's whole entry: its recipe is the study's
        "preprocess": split,
        "train": params["train"],
        "models": {family: params["models"][family] for family in section["runs"]},
        seeds.SECTION: section,
    }
    section = matched.check_params(
        params.get(matched.SECTION), params["models"], params["preprocess"]["image_sizes"]
    )
    out[matched.SECTION] = {  # each family's architecture keys only: the recipe is the study's
        "preprocess": split,
        "train": {k: params["train"][k] for k in RUN_SETTINGS},
        "models": {f: matched.family_entry(params["models"], f) for f in section["families"]},
        matched.SECTION: section,
    }
    section = ablation.check_params(params.get(ablation.SECTION), params)
    base = dict(params["models"][section["base"]])  # every change starts from its recipe
    if section["epochs"] is not None:  # ... at the study's epochs, not the base's
        base.pop("epochs", None)
    out[ablation.SECTION] = {
        "preprocess": split,
        "train": params["train"],
        "models": {section["base"]: base},
        ablation.SECTION: section,
    }
    return out


def differences(params: Mapping, reference: Mapping, prefix: str = "") -> list[dict]:
    """Every setting (a dotted key) whose value differs between two resolved params, with
    both values: what ``params``' profile cuts from (or adds to) ``reference``'s. A list is
    one setting; a key that only one side has is shown as ``None`` on the other."""
    rows = []
    for key in [*params, *(k for k in reference if k not in params)]:
        if not prefix and key == "profile":
            continue
        dotted = f"{prefix}{key}"
        a, b = params.get(key), reference.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            rows.extend(differences(a, b, f"{dotted}."))
        elif a != b:
            rows.append({"setting": dotted, "this profile": a, LARGEST_CPU_PROFILE: b})
    return rows


#: params sections that are studies of their own, each a training stage
#: (``cross-validation``: :mod:`bloodcells.crossval`; ``shuffling``: :mod:`bloodcells.shuffling`;
#: ``train-robust``: :mod:`bloodcells.robust`)
STUDIES = ("cross_validation", "shuffling", "robust_training")
#: a family's keys that a study sets itself: editing them in ``models`` leaves it alone
OVERRIDDEN = ("epochs", "image_size", "conv_widths")
#: the ``train`` keys the compute-matched study reads (its recipe sets the rest)
RUN_SETTINGS = ("deterministic", "graph_optimizer", "run_eagerly")


def trainers(params: dict) -> list[str]:
    """Every training stage's key: the families, then the studies."""
    return [*params["models"], *STUDIES, seeds.SECTION, matched.SECTION, ablation.SECTION]


def sizes_used(params: dict, key: str) -> list[int]:
    """Every cached image size the training stage ``key`` (a family or a study) reads."""
    if key in STUDIES:
        return [int(params[key]["image_size"])]
    if key == seeds.SECTION:
        return sorted({s for family in params[key]["runs"] for s in sizes_used(params, family)})
    if key == matched.SECTION:
        return [int(params[key]["image_size"])] if params[key]["families"] else []
    if key == ablation.SECTION:
        section = params[key]
        run = ablation.selected(section)
        if not run:
            return []
        changed = {c["image_size"] for c in run.values() if "image_size" in c}
        return sorted({*sizes_used(params, section["base"]), *map(int, changed)})
    entry = params["models"][key]
    size = entry.get("image_size") or params["train"].get("image_size")
    return [int(size)] if size else []


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_inputs(params: dict, root: Path) -> dict[str, dict]:
    """``{key: {"manifest": sha, "<size>": {array file: sha}}}`` for every family and
    study."""
    cache: dict[Path, str] = {}

    def sha(path: Path) -> str:
        if path not in cache:
            cache[path] = file_sha256(path)
        return cache[path]

    manifest = sha(manifest_path(root))
    out = {}
    for key in trainers(params):
        body: dict = {"manifest": manifest}
        for size in sizes_used(params, key):
            folder = processed_dir(size, root)
            arrays = sorted(folder.glob("*.npy"))
            if not arrays:
                raise FileNotFoundError(
                    f"No cached arrays in {folder}: {where(params, key)} uses {size} px. Add "
                    f"{size} to 'preprocess.image_sizes' in params.yaml and rerun the "
                    "'preprocess' stage."
                )
            body[str(size)] = {a.name: sha(a) for a in arrays}
        out[key] = body
    return out


def where(params: dict, key: str) -> str:
    """The params key that sets a trainer's image size, for error messages."""
    if key == seeds.SECTION:
        return f"a family of '{key}.runs' (its models entry)"
    if key == matched.SECTION:
        return f"'{key}.image_size'"
    if key == ablation.SECTION:
        return f"'{key}.base' (its models entry) or an image_size of '{key}.changes'"
    return f"{key}.image_size" if key in STUDIES else f"models.{key}"


def write_all(files: dict[str, dict], folder: Path) -> list[Path]:
    """Write ``<name>.json`` for each entry (unchanged content left untouched); remove
    files of consumers that no longer exist. Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, body in files.items():
        path = folder / f"{name}.json"
        text = json.dumps(body, indent=2, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    for stale in set(folder.glob("*.json")) - {folder / f"{n}.json" for n in files}:
        stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("params", "inputs"))
    args = parser.parse_args(argv)
    root = project_root()
    try:
        params = load_params()
        if args.what == "params":
            largest = load_params(profile=LARGEST_CPU_PROFILE)
            files, folder = stage_params(params, largest), root / PARAMS_DIR
        else:
            files, folder = stage_inputs(params, root), root / INPUTS_DIR
    except ParamsError as err:  # a wrong value in params.yaml: say which, no traceback
        print(f"bloodcells.plan {args.what}: {err}", file=sys.stderr)
        return 2
    written = write_all(files, folder)
    print(
        f"{args.what} (profile {params['profile']}): {len(files)} files in {folder}, "
        f"{len(written)} changed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
