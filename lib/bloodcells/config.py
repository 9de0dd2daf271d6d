"""The one params loader: ``params.yaml`` with the active profile's overlay applied.

``params.yaml`` holds every knob at its default (``cpu``) value; ``profiles.<name>`` holds
only what a profile changes. The base file is also the schema: an overlay or override that
names a key the base does not have is an error that names the key and the allowed ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bloodcells.paths import project_root

PROFILES = ("smoke", "cpu", "overnight", "paper")


#: the values a params key may take: the one list that the loader's checks and
#: ``TrainConfig.validate`` both read
OPTIMIZERS = ("adam", "rmsprop", "sgd")
BALANCE = ("none", "class_weight", "smote")
WEIGHTS = ("none", "imagenet")


class ParamsError(ValueError):
    """A params.yaml key is missing, unknown or out of range."""


# Keys a family entry (models.<family>) may set besides its own: the shared train defaults.
FAMILY_KEYS = ("learning_rate", "optimizers", "image_size", "epochs")


def _merge(base: dict, overlay: Mapping, where: str, family_keys: frozenset = frozenset()) -> dict:
    """Overlay ``overlay`` on ``base``; keys the base lacks are errors naming the key.

    Inside a family entry (``models.<family>``) the shared ``train`` keys are allowed too.
    A mapping that is empty in the base (``ablation.changes``) is free-form: an overlay
    sets it whole, and its own checks name its keys.
    """
    out = copy.deepcopy(base)
    in_family = where.startswith("models.") and where.count(".") == 1
    for key, value in overlay.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in base:
            if in_family and key in family_keys:
                out[key] = copy.deepcopy(value)
                continue
            allowed = set(map(str, base)) | (set(family_keys) if in_family else set())
            raise ParamsError(
                f"Unknown params key '{name}'. Allowed keys here: {', '.join(sorted(allowed))}."
            )
        if isinstance(base[key], dict) and base[key] and isinstance(value, Mapping):
            out[key] = _merge(base[key], value, name, family_keys)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _require(params: dict, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"Missing params key '{dotted}' in params.yaml.")
        node = node[part]
    return node


def _check_fraction(params: dict, key: str) -> None:
    value = _require(params, key)
    if not isinstance(value, int | float) or not 0 < value < 1:
        raise ParamsError(f"Params key '{key}' must be a number in (0, 1); got {value!r}.")


def least_epochs(family: str, frozen_epochs: object = None) -> int:
    """The fewest ``epochs`` a run of ``family`` may have: 1, but 0 for the hybrid with a
    frozen phase (``frozen_epochs`` >= 1). The hybrid's ``epochs`` are its joint phase's,
    and none trains the head alone on the frozen branches (the paper's second hybrid run)."""
    head_only = (
        family == "hybrid"
        and isinstance(frozen_epochs, int)
        and not isinstance(frozen_epochs, bool)
        and frozen_epochs >= 1
    )
    return 0 if head_only else 1


def _check_positive_int(params: dict, key: str, minimum: int = 1) -> None:
    value = _require(params, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ParamsError(f"Params key '{key}' must be an integer >= {minimum}; got {value!r}.")


def _check_studies(params: dict, sizes: list) -> None:
    """The ``cross_validation`` and ``shuffling`` sections: studies of their own."""
    for section in ("cross_validation", "shuffling"):
        family = _require(params, f"{section}.family")
        if family not in (params.get("models") or {}):
            raise ParamsError(
                f"Params key '{section}.family' is {family!r}; it must name a 'models' entry "
                f"({', '.join(params.get('models') or {})})."
            )
        _check_positive_int(params, f"{section}.epochs")
        if _require(params, f"{section}.image_size") not in sizes:
            raise ParamsError(
                f"Params key '{section}.image_size' is {params[section]['image_size']!r}, which "
                f"is not among the cached sizes 'preprocess.image_sizes' {sizes}; add it there."
            )
    _check_positive_int(params, "cross_validation.folds", minimum=2)
    _check_fraction(params, "cross_validation.inner_val")
    balance = _require(params, "cross_validation.balance")
    if balance not in BALANCE:
        raise ParamsError(
            f"Params key 'cross_validation.balance' is {balance!r}; allowed: {', '.join(BALANCE)}."
        )
    seeds = _require(params, "shuffling.seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ParamsError(
            "Params key 'shuffling.seeds' must be a list of distinct integers (one run per "
            f"condition per seed; 5 or more for a spread worth reading); got {seeds!r}."
        )
    _check_fraction(params, "shuffling.test_size")
    _check_fraction(params, "shuffling.validation_split")
    _check_positive_int(params, "shuffling.random_state", minimum=0)


def validate(params: dict) -> dict:
    """Check value ranges of the resolved params; return them unchanged."""
    if params.get("profile") not in PROFILES:
        raise ParamsError(
            f"Params key 'profile' must be one of {', '.join(PROFILES)}; "
            f"got {params.get('profile')!r}."
        )
    _check_fraction(params, "preprocess.test_size")
    _check_fraction(params, "preprocess.val_size")
    _check_positive_int(params, "preprocess.n_folds", minimum=2)
    _check_positive_int(params, "preprocess.seed", minimum=0)
    _check_positive_int(params, "preprocess.workers", minimum=0)
    _check_positive_int(params, "preprocess.near_duplicate_max_distance", minimum=0)
    _check_positive_int(params, "champion.candidates")
    gap = _require(params, "champion.max_gap")
    if not isinstance(gap, int | float) or isinstance(gap, bool) or not 0 <= gap <= 1:
        raise ParamsError(
            f"Params key 'champion.max_gap' must be a fraction of validation accuracy in "
            f"[0, 1] (0.02 = two points); got {gap!r}."
        )
    views = _require(params, "champion.tta_views")
    if views not in (1, 2, 4, 8):
        raise ParamsError(
            f"Params key 'champion.tta_views' must be 1, 2, 4 or 8 (dihedral views); got {views!r}."
        )
    sizes = _require(params, "preprocess.image_sizes")
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        raise ParamsError(
            f"Params key 'preprocess.image_sizes' must be a non-empty list of integers; "
            f"got {sizes!r}."
        )
    if any(s < 16 or s > 512 for s in sizes):
        raise ParamsError(
            f"Params key 'preprocess.image_sizes' values must lie in 16..512 px; got {sizes!r}."
        )
    allowed = {"optimizers": OPTIMIZERS, "balance": BALANCE, "weights": WEIGHTS}
    for key, values in allowed.items():
        value = (params.get("train") or {}).get(key)
        if key != "optimizers" and value is not None and value not in values:
            raise ParamsError(
                f"Params key 'train.{key}' is {value!r}; allowed: {', '.join(values)}."
            )
    for key, entry in (params.get("models") or {}).items():
        for name, values in allowed.items():
            given = entry.get(name)
            given = given if isinstance(given, list) else [given]
            bad = [g for g in given if g is not None and g not in values]
            if bad:
                raise ParamsError(
                    f"Params key 'models.{key}.{name}' has {bad[0]!r}; "
                    f"allowed: {', '.join(values)}."
                )
        if key == "hybrid" and "frozen_epochs" in entry:
            _check_positive_int(params, "models.hybrid.frozen_epochs", 0)
        least = least_epochs(key, entry.get("frozen_epochs"))
        _check_positive_int(params, f"models.{key}.epochs", least)
        _require(params, f"models.{key}.image_size")
        for name, size in entry.items():
            if name.endswith("image_size") and size not in sizes:
                raise ParamsError(
                    f"Params key 'models.{key}.{name}' is {size!r}, which is not among the "
                    f"cached sizes 'preprocess.image_sizes' {sizes}; add it there."
                )
    _check_studies(params, sizes)
    sources = _require(params, "data.sources")
    if not isinstance(sources, list) or not sources:
        raise ParamsError("Params key 'data.sources' must be a non-empty list of sources.")
    for i, src in enumerate(sources):
        if not isinstance(src, dict) or set(src) - {"path", "url", "sha256"}:
            raise ParamsError(
                f"Params key 'data.sources[{i}]' must be a mapping with 'path' or 'url' "
                f"(and optionally 'sha256'); got {src!r}."
            )
        if ("path" in src) == ("url" in src):
            raise ParamsError(f"Params key 'data.sources[{i}]' needs exactly one of 'path', 'url'.")
    return params


def read_params_file(path: Path | None = None) -> dict:
    path = path or project_root() / "params.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} does not exist.") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping at the top level.")
    return raw


def load_params(
    path: Path | None = None,
    profile: str | None = None,
    overrides: Mapping | None = None,
) -> dict:
    """Return the resolved params: base, then the profile overlay, then ``overrides``.

    The profile is ``params['profile']`` unless ``profile`` is given. The result has no
    ``profiles`` key; it has ``profile`` naming the overlay that was applied.
    """
    raw = read_params_file(path)
    profiles = raw.pop("profiles", {}) or {}
    name = profile or raw.get("profile")
    if name not in PROFILES:
        raise ParamsError(
            f"Params key 'profile' must be one of {', '.join(PROFILES)}; got {name!r}."
        )
    unknown = set(profiles) - set(PROFILES)
    if unknown:
        raise ParamsError(
            f"Unknown profile(s) under 'profiles': {', '.join(sorted(unknown))}. "
            f"Allowed: {', '.join(PROFILES)}."
        )
    raw["profile"] = name
    family_keys = frozenset(FAMILY_KEYS) | frozenset(raw.get("train") or {})
    params = _merge(raw, profiles.get(name) or {}, "", family_keys)
    if overrides:
        params = _merge(params, overrides, "", family_keys)
    return validate(params)


def params_hash(params: Mapping) -> str:
    """A short, stable hash of a params (sub)tree, for provenance records."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def notebook_params(profile: str | None = None, **sections: dict | None) -> dict:
    """Params for a notebook: params.yaml under ``profile``, with injected sections on top.

    Under papermill the stage runner injects each section the notebook declares; in
    JupyterLab those are ``None`` and the values come from params.yaml.
    """
    injected = {k: v for k, v in sections.items() if v is not None}
    params = load_params(profile=profile)
    params.update(injected)
    return validate(params)
