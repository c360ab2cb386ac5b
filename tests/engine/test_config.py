"""The run config's refusals, word for word, and where a config is read from (written against the
mutation pass of engine/config.py: the older tests matched substrings, which a garbled message keeps)."""

from __future__ import annotations

import json

import pytest
import yaml

from restore_rwkv.engine.config import load_config, save_config, shipped_configs
from restore_rwkv.utils.errors import InputError

BASE = "name: r\ntask: ct_denoise\ndata:\n  train:\n    root: data\n"


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(BASE)
    return path


def _refusal(path, overrides) -> str:
    with pytest.raises(InputError) as error:
        load_config(path, overrides)
    return str(error.value)


@pytest.mark.parametrize(
    "overrides, where, problem",
    [
        (["model.init_weights=ct_denoise_light", "model.zero_init_output=true"], "model",
         "give init_weights or zero_init_output, not both (the second would erase the first)"),
        (["data.train.manifest=m.csv"], "data.train", "give exactly one of root, manifest, hq (got root, manifest)"),
        (["data.train.root=null"], "data.train", "give exactly one of root, manifest, hq (got none)"),
        (["data.train={hq: [a]}"], "data.train", "hq files need simulate: the task whose degradation makes their LQ"),
        (["data.task_weights={ct_denoise: 1}"], "data", "task_weights needs balance_tasks: true"),
        (["schedule.warmup=10", "schedule.iterations=10"], "schedule", "warmup (10) must be below iterations (10)"),
        (["schedule.min_lr=0.1"], "(top level)", "schedule.min_lr (0.1) is above optim.lr (0.0002)"),
    ],
)
def test_each_rule_refuses_with_its_own_line(config_file, overrides, where, problem):
    refusal = _refusal(config_file, overrides)  # pydantic puts its own words ("Value error, ") between
    assert refusal.startswith(f"{config_file}: {where}: ") and refusal.endswith(f" {problem}")
    assert "\n" not in refusal


def test_the_limits_themselves_are_allowed(config_file):
    config = load_config(config_file, ["schedule.warmup=9", "schedule.iterations=10", "schedule.min_lr=2e-4"])
    assert (config.schedule.warmup, config.schedule.min_lr) == (9, config.optim.lr)


def test_to_dict_is_plain_json(config_file):
    saved = load_config(config_file).to_dict()
    assert saved["optim"]["betas"] == [0.9, 0.999]  # a list, as JSON and YAML write it, not a tuple
    assert json.loads(json.dumps(saved)) == saved


def test_a_config_path_is_read_as_a_file_whatever_its_suffix(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert _refusal(missing, []) == f"{missing}: no such config file"
    other = tmp_path / "run.cfg"
    other.write_text(BASE)
    assert load_config(other).name == "r"


def test_missing_yml_and_unknown_names_are_refused_word_for_word(tmp_path):
    missing = tmp_path / "missing.yml"
    assert _refusal(missing, []) == f"{missing}: no such config file"
    assert _refusal("no_such_config", []) == \
        f"unknown config 'no_such_config'; shipped: {', '.join(shipped_configs())} (or give a .yaml path)"
    assert len(shipped_configs()) > 1 and "ct_denoise" in shipped_configs()
    # a shipped config's own errors name it
    assert _refusal("ct_denoise", ["optim.lr=-1"]).startswith("config ct_denoise: optim.lr: ")


def test_yaml_that_does_not_parse_is_one_line_with_the_parsers_words(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: r\na_much_longer_title_key_name: \"" + "word " * 40 + "\n" * 2000)  # unclosed quote
    with pytest.raises(yaml.YAMLError) as parse_error:
        yaml.safe_load(broken.read_text())
    words = " ".join(str(parse_error.value).split())
    assert len(words) > 200  # the message keeps the parser's first 200 characters
    assert _refusal(broken, []) == f"{broken}: not valid YAML ({words[:200]})"
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    assert _refusal(listing, []) == f"{listing}: a config is a YAML mapping of keys to values"


def test_overrides_are_parsed_and_refused_word_for_word(config_file):
    assert load_config(config_file, ["name=a=b"]).name == "a=b"  # only the first "=" separates
    assert _refusal(config_file, ["foo"]) == "--set takes key=value (e.g. optim.lr=1e-4), got 'foo'"
    assert _refusal(config_file, ["=3"]) == "--set has an empty key in '=3'"
    assert _refusal(config_file, ["name.x=1"]) == "--set name.x: name is not a section"
    assert _refusal(config_file, ["data.train.root.x=1"]) == "--set data.train.root.x: data.train.root is not a section"


def test_schema_errors_name_the_key_and_what_was_given(config_file):
    assert _refusal(config_file, ["optim.foo=1"]) == \
        f"{config_file}: unknown key optim.foo; valid keys here: lr, betas, weight_decay, grad_clip"
    # an optional section (data.val) lists its own keys too
    assert _refusal(config_file, ["data.val={root: v, foo: 1}"]) == (
        f"{config_file}: unknown key data.val.foo; valid keys here: "
        "root, manifest, hq, split, tasks, simulate, degradation, max_images")
    refusal = _refusal(config_file, ["optim.lr=-1"])
    assert refusal.startswith(f"{config_file}: optim.lr: ") and refusal.endswith(" (got -1)")
    config_file.write_text(BASE.replace("name: r\n", ""))
    assert _refusal(config_file, []) == f"{config_file}: missing key name"


def test_a_saved_config_keeps_the_schema_order_and_loads_back(config_file, tmp_path):
    config = load_config(config_file, ["optim.lr=1e-3"])
    saved = save_config(config, tmp_path / "saved.yaml")
    assert saved.read_text().startswith("name: r\ntask: ct_denoise\nout: runs\nmodel:")
    assert load_config(saved) == config
