import pytest

from alignloop.config.base import load_config, parse_overrides, to_yaml
from alignloop.config.registry import config_class
from alignloop.errors import ConfigError
from alignloop.pretrain.config import PretrainConfig


def test_overrides_nest_and_parse_yaml_scalars():
    assert parse_overrides(["train.max_steps=200", "model.preset=small", "data.path=a b.txt", "x.y=0.5",
                            "flag=true"]) == {
        "train": {"max_steps": 200}, "model": {"preset": "small"}, "data": {"path": "a b.txt"},
        "x": {"y": 0.5}, "flag": True}


def test_precedence_defaults_then_file_then_overrides(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("train:\n  max_steps: 50\n  lr: 0.01\n")
    cfg = load_config(PretrainConfig, config_file, ["train.max_steps=7"])
    assert cfg.train.max_steps == 7 and cfg.train.lr == 0.01 and cfg.train.batch_size == 16


def test_scientific_notation_reaches_float_fields():
    # YAML 1.1 reads "1e-3" as a string; the typed field still gets the float.
    assert load_config(PretrainConfig, None, ["train.lr=1e-3"]).train.lr == 1e-3


def test_unknown_key_is_one_line_naming_it():
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, ["train.max_stepz=3"])
    assert str(err.value) == "unknown config key 'train.max_stepz'"


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, ["train.max_steps=many"])
    message = str(err.value)
    assert "'train.max_steps'" in message and "'many'" in message and "\n" not in message


def test_invalid_choice_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="model.preset"):
        load_config(PretrainConfig, None, ["model.preset=huge"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.max_steps"])


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PretrainConfig, bad, [])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "missing.yaml", [])


def test_yaml_round_trip_and_registry():
    cfg = config_class("pretrain")()
    import yaml

    assert PretrainConfig.model_validate(yaml.safe_load(to_yaml(cfg))) == cfg
    with pytest.raises(ConfigError, match="unknown stage"):
        config_class("nope")


def test_commented_yaml_of_every_stage_reads_back_as_its_defaults():
    import yaml

    from alignloop.config.base import to_commented_yaml
    from alignloop.config.registry import STAGE_CONFIGS

    for stage in STAGE_CONFIGS:
        cls = config_class(stage)
        text = to_commented_yaml(cls())
        assert cls.model_validate(yaml.safe_load(text)) == cls(), stage
        assert "#" in text


def test_a_train_override_keeps_the_stage_defaults():
    from alignloop.sft.config import SFTConfig

    cfg = load_config(SFTConfig, None, ["train.max_minutes=6"])
    assert (cfg.train.max_steps, cfg.train.lr, cfg.train.warmup_steps) == (300, 3e-4, 20)
