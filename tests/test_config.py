"""The params loader: profiles overlay the base, and bad keys fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bloodcells.config import ParamsError, load_params, params_hash
from tests.conftest import fresh_python

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_profiles_overlay_the_base():
    cpu = load_params(ROOT / "params.yaml", profile="cpu")
    smoke = load_params(ROOT / "params.yaml", profile="smoke")
    assert cpu["profile"] == "cpu" and smoke["profile"] == "smoke"
    assert "pbc-sample" in smoke["data"]["sources"][0]["path"]
    assert cpu["data"]["expect_complete"] is True
    assert smoke["preprocess"]["seed"] == cpu["preprocess"]["seed"]  # untouched keys kept
    assert "profiles" not in cpu
    assert params_hash(cpu) != params_hash(smoke)


def test_unknown_key_in_a_profile_names_the_key(tmp_path):
    path = write(tmp_path, lambda r: r["profiles"]["smoke"]["preprocess"].update(sed=1))
    with pytest.raises(ParamsError, match=r"Unknown params key 'preprocess\.sed'.*seed"):
        load_params(path, profile="smoke")


def test_a_mapping_empty_in_the_base_is_set_whole_by_a_profile(tmp_path):
    """A mapping empty in the base (here ``ablation.changes``) is free-form: a profile
    names its own entries. A non-empty one is merged key by key: smoke's values replace
    the base's, its other entries stay; unknown keys stay errors."""
    cpu = load_params(ROOT / "params.yaml", profile="cpu")
    smoke = load_params(ROOT / "params.yaml", profile="smoke")
    assert cpu["ablation"]["changes"]["ema"] == {"ema_momentum": 0.99}
    assert cpu["ablation"]["changes"]["whitening_stem"] == {"whitening": 2}
    assert smoke["ablation"]["changes"]["ema"] == {"ema_momentum": 0.9}
    assert smoke["ablation"]["changes"].keys() == cpu["ablation"]["changes"].keys()

    def empty_in_the_base(raw: dict) -> None:
        raw["ablation"].update(changes={}, run="all")
        raw["profiles"]["smoke"]["ablation"].update(changes={"wide": {"dense_units": 64}})

    path = write(tmp_path, empty_in_the_base)
    assert load_params(path, profile="smoke")["ablation"]["changes"] == {
        "wide": {"dense_units": 64}
    }
    assert load_params(path, profile="cpu")["ablation"]["changes"] == {}
    path = write(tmp_path, lambda r: r["profiles"]["smoke"]["ablation"].update(seedz=[1]))
    with pytest.raises(ParamsError, match=r"Unknown params key 'ablation\.seedz'"):
        load_params(path, profile="smoke")


def test_unknown_profile(tmp_path):
    path = write(tmp_path, lambda r: r.update(profile="gpu"))
    with pytest.raises(ParamsError, match="'profile' must be one of smoke, cpu, overnight, paper"):
        load_params(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("test_size", 1.5, "preprocess.test_size"),
        ("n_folds", 1, "preprocess.n_folds"),
        ("image_sizes", [8], "preprocess.image_sizes"),
        ("image_sizes", [], "preprocess.image_sizes"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path, key, value, message):
    path = write(tmp_path, lambda r: r["preprocess"].update({key: value}))
    with pytest.raises(ParamsError, match=message):
        load_params(path)


def test_malformed_source(tmp_path):
    path = write(tmp_path, lambda r: r["data"].update(sources=[{"file": "x"}]))
    with pytest.raises(ParamsError, match=r"data\.sources\[0\]"):
        load_params(path)


def test_not_yaml(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("profile: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda r: r["models"]["resnet50"].update(optimizers=["sgd", "adamw"]),
            r"'models\.resnet50\.optimizers' has 'adamw'; allowed: adam, rmsprop, sgd",
        ),
        (lambda r: r["models"]["cnn"].update(balance="undersample"), r"'models\.cnn\.balance'"),
        (lambda r: r["train"].update(weights="imagenet21k"), r"'train\.weights'.*none, imagenet"),
        (lambda r: r["models"]["cnn"].update(epochs=0), r"'models\.cnn\.epochs'"),
        (  # the hybrid's joint phase may be skipped only when a frozen phase trains
            lambda r: r["models"]["hybrid"].update(epochs=0, frozen_epochs=0),
            r"'models\.hybrid\.epochs' must be an integer >= 1; got 0",
        ),
        (lambda r: r["models"]["hybrid"].update(frozen_epochs=-1), r"'models\.hybrid\.frozen_"),
        (lambda r: r["models"]["cnn"].update(image_size=48), r"'models\.cnn\.image_size' is 48"),
        (
            lambda r: r["champion"].update(tta_views=3),
            r"'champion\.tta_views' must be 1, 2, 4 or 8",
        ),
        (lambda r: r["champion"].update(candidates=0), r"'champion\.candidates'"),
    ],
)
def test_model_settings_fail_before_any_work(tmp_path, mutate, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, mutate))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["champion"].update(max_gap=2), r"'champion\.max_gap' must be a fraction"),
        (lambda r: r["champion"].update(max_gap="2%"), r"'champion\.max_gap'"),
        (lambda r: r["shuffling"].update(family="cnnn"), r"'shuffling\.family' is 'cnnn'"),
        (lambda r: r["shuffling"].update(seeds=[1, 1]), r"'shuffling\.seeds' must be a list"),
        (lambda r: r["shuffling"].update(image_size=48), r"'shuffling\.image_size' is 48"),
        (lambda r: r["cross_validation"].update(folds=1), r"'cross_validation\.folds'"),
        (lambda r: r["cross_validation"].update(balance="smot"), r"'cross_validation\.balance'"),
    ],
)
def test_study_and_champion_sections_name_the_bad_key(tmp_path, mutate, message):
    with pytest.raises(ParamsError, match=message):
        load_params(write(tmp_path, mutate), profile="cpu")


def test_the_params_stage_checks_the_generalisation_section(tmp_path, capsys, monkeypatch):
    # checked by its own module when the params stage resolves it, before any training;
    # the stage says which key, without a traceback
    from bloodcells import plan

    params = load_params(
        write(tmp_path, lambda r: r["generalisation"].update(severities=[4])), profile="cpu"
    )
    with pytest.raises(ParamsError, match=r"'generalisation\.severities'"):
        plan.stage_params(params, load_params(ROOT / "params.yaml", profile="overnight"))
    monkeypatch.setattr(plan, "load_params", lambda profile=None: params)
    assert plan.main(["params"]) == 2
    assert "'generalisation.severities'" in capsys.readouterr().err


def test_the_reports_index_lists_what_the_default_profile_cuts_from_overnight(tmp_path):
    from bloodcells import plan, site
    from bloodcells.plan import differences

    cpu = load_params(ROOT / "params.yaml", profile="cpu")
    overnight = load_params(ROOT / "params.yaml", profile="overnight")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["profiles"]["overnight"]
    rows = {r["setting"]: (r["this profile"], r["overnight"]) for r in differences(cpu, overnight)}
    # every epoch count overnight sets is a row, with both values as resolved
    for family, entry in raw["models"].items():
        if "epochs" in entry:
            pair = (cpu["models"][family]["epochs"], entry["epochs"])
            assert rows[f"models.{family}.epochs"] == pair
    assert rows["seed_spread.runs"] == (cpu["seed_spread"]["runs"], raw["seed_spread"]["runs"])
    # the ablation runs on demand under both (decision 025): not a cut
    assert not [setting for setting in rows if setting.startswith("ablation.")]
    assert "profile" not in rows and "data.sources" not in rows  # what both share is not
    assert differences(overnight, overnight) == []
    # the params stage writes them for the site stage; the index renders each row
    for params, expected in ((overnight, 0), (cpu, len(rows))):
        body = plan.stage_params(params, overnight)["site"]
        assert body == {"profile": params["profile"], "cuts": differences(params, overnight)}
        plan.write_all({"site": body}, tmp_path / plan.PARAMS_DIR)
        section = "".join(site.cuts_section(tmp_path))
        assert section.count("<tr>") == expected + (expected > 0)  # and the header
    assert section.startswith("<h2>What this profile leaves out</h2>")
    assert f"these {len(rows)} settings" in section
    here, there = cpu["models"]["cnn"]["epochs"], raw["models"]["cnn"]["epochs"]
    assert f"<tr><td>models.cnn.epochs</td><td>{here}</td><td>{there}</td></tr>" in section
    assert "<td>compute_matched.families</td><td>[]</td>" in section  # not run under cpu


def test_the_params_stage_resolves_every_profile_without_tensorflow():
    """``plan params`` runs on every edit of ``params.yaml`` (and 18 times in the edit
    test): resolving and checking every profile must not import Keras, which costs about
    10 s a process on a 2-core AVX2 CPU. In a fresh interpreter, since this session has
    long since loaded TensorFlow."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bloodcells import plan\n"
        "from bloodcells.config import load_params\n"
        "largest = load_params(Path(sys.argv[1]), profile=plan.LARGEST_CPU_PROFILE)\n"
        "for p in sys.argv[2:]:\n"
        "    assert plan.stage_params(load_params(Path(sys.argv[1]), profile=p), largest)\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    assert fresh_python(script, str(ROOT / "params.yaml"), *raw["profiles"]) == "[]"
