"""The typed parameter loader: profiles resolve, and every mistake names its file and key."""

from pathlib import Path

import pytest
import yaml

from copa.config import ParamsError, available_profiles, load_params, params_from_dict, parse_override

PARAMS_DIR = Path(__file__).parents[1] / "params"


def _flat_keys(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.parametrize("profile", ["fixture", "demo", "paper"])
def test_every_profile_resolves(profile):
    params = load_params(profile, params_dir=PARAMS_DIR)
    assert params.profile == profile
    assert params.synth.images.coco_train2014 > 0
    assert params.provenance["synth.images.vg"] == str(PARAMS_DIR / "profiles" / f"{profile}.yaml")
    assert params.provenance["synth.jpeg_quality"] == str(PARAMS_DIR / "base.yaml")


def test_profiles_define_the_same_keys():
    """A key set in one profile only would leak its value into runs of the others."""
    keysets = {p: set(_flat_keys(yaml.safe_load((PARAMS_DIR / "profiles" / f"{p}.yaml").read_text()))) for p in available_profiles(PARAMS_DIR)}
    assert set(keysets) == {"fixture", "demo", "paper"}
    first = next(iter(keysets.values()))
    assert all(keys == first for keys in keysets.values()), keysets


def test_default_profile_comes_from_base():
    assert load_params(None, params_dir=PARAMS_DIR).profile == "demo"


def test_overrides_win_and_are_typed():
    params = load_params("fixture", ["synth.seed=7", "synth.image_side=[50, 60]"], PARAMS_DIR)
    assert params.synth.seed == 7 and params.synth.image_side == (50, 60)
    assert params.provenance["synth.seed"] == "--set"


def _params_dir(tmp_path, base_extra="", profile_text=None):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "base.yaml").write_text((PARAMS_DIR / "base.yaml").read_text() + base_extra)
    text = profile_text if profile_text is not None else (PARAMS_DIR / "profiles" / "fixture.yaml").read_text()
    (tmp_path / "profiles" / "fixture.yaml").write_text(text)
    return tmp_path


def test_unknown_key_names_file_and_key(tmp_path):
    d = _params_dir(tmp_path, profile_text=(PARAMS_DIR / "profiles" / "fixture.yaml").read_text().replace("  seed: 0", "  sed: 0"))
    with pytest.raises(ParamsError, match=r"profiles/fixture\.yaml: unknown key 'synth\.sed'; did you mean 'synth\.seed'"):
        load_params("fixture", params_dir=d)


def test_wrong_type_names_file_and_key(tmp_path):
    d = _params_dir(tmp_path, profile_text=(PARAMS_DIR / "profiles" / "fixture.yaml").read_text().replace("coco_train2014: 60", "coco_train2014: many"))
    with pytest.raises(ParamsError, match=r"fixture\.yaml: key 'synth\.images\.coco_train2014' must be an integer, got 'many'"):
        load_params("fixture", params_dir=d)


def test_missing_key_is_reported(tmp_path):
    text = "\n".join(line for line in (PARAMS_DIR / "profiles" / "fixture.yaml").read_text().splitlines() if "flickr30k:" not in line)
    with pytest.raises(ParamsError, match=r"missing key 'synth\.images\.flickr30k'"):
        load_params("fixture", params_dir=_params_dir(tmp_path, profile_text=text))


@pytest.mark.parametrize(
    "override, message",
    [
        ("synth.seed=abc", r"--set: key 'synth\.seed' must be an integer"),
        ("synth.bogus=1", r"--set: unknown key 'synth\.bogus'"),
        ("data.source=imaginary", r"key 'data\.source' must be one of 'synthetic', 'real'"),
        ("synth.answer_noise=true", r"key 'synth\.answer_noise' must be a number"),
        ("synth.image_side=[1, 2, 3]", r"key 'synth\.image_side' must be a list of 2 values"),
        ("noequals", r"expected KEY=VALUE"),
        ("pretrain.min_lr=1e-5", r"must be a number \(YAML needs a dot: write 1.0e-05\), got '1e-5'"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params("fixture", [override], PARAMS_DIR)


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ParamsError, match=r"unknown profile 'tiny'.*available: demo, fixture, paper"):
        load_params("tiny", params_dir=PARAMS_DIR)


def test_malformed_yaml_names_the_file(tmp_path):
    d = _params_dir(tmp_path, profile_text="synth: [unclosed\n")
    with pytest.raises(ParamsError, match=r"fixture\.yaml: not valid YAML"):
        load_params("fixture", params_dir=d)


def test_parse_override_nests():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


def test_to_dict_gives_values_without_provenance():
    params = load_params("fixture", params_dir=PARAMS_DIR)
    as_dict = params.to_dict()
    assert "provenance" not in as_dict and as_dict["synth"]["images"]["vg"] == params.synth.images.vg


def test_params_of_an_older_checkpoint_get_new_keys_from_the_profile():
    current = load_params("fixture", ["seed=5"], PARAMS_DIR)
    written = current.to_dict()
    del written["finetune"]  # a section added after the checkpoint was written
    del written["model"]["vocab_file"]  # ... and an option
    restored = params_from_dict(written, "run/checkpoints/last.pt", PARAMS_DIR)
    assert restored == current  # the checkpoint's own values (seed 5) kept, the rest from the files
    assert restored.provenance["seed"] == "run/checkpoints/last.pt"
    assert restored.provenance["finetune.retrieval.epochs"] == str(PARAMS_DIR / "profiles" / "fixture.yaml")
    written["model"]["retired_option"] = 1
    with pytest.raises(ParamsError, match="retired_option"):
        params_from_dict(written, "run/checkpoints/last.pt", PARAMS_DIR)


def test_a_key_given_twice_is_refused_naming_file_key_and_line(tmp_path):
    """YAML keeps the last of two equal keys silently: one of the two values would be lost unseen."""
    text = (PARAMS_DIR / "profiles" / "fixture.yaml").read_text()
    d = _params_dir(tmp_path, profile_text=text.replace("  seed: 0", "  seed: 0\n  seed: 1", 1))
    line = text[:text.index("  seed: 0")].count("\n") + 2  # the second key, 1-based
    with pytest.raises(ParamsError, match=rf"fixture\.yaml: not valid YAML \(duplicate key 'seed'\s+in \"<unicode string>\", line {line}"):
        load_params("fixture", params_dir=d)
    with pytest.raises(ParamsError, match=r"duplicate key 'a'"):
        load_params("fixture", ["synth.image_side={a: 1, a: 2}"], PARAMS_DIR)
