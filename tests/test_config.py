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
    assert str(err.value) == "unknown config key 'train.max_stepz'; did you mean 'train.max_steps'?"


@pytest.mark.parametrize("stage, override, meant", [
    ("pretrain", "max_steps=3", "'train.max_steps'"),  # the right name in the wrong section
    ("pretrain", "trian.max_steps=3", "'train'"),  # a misspelt section
    ("pretrain", "data.pth=x", "'data.path'"),
    ("sample", "max_new_tokenz=3", "'sampling.max_new_tokens'"),
    ("loop", "ppo.iteration=3", "'ppo.ppo.iterations'"),
    ("loop", "lr=1", "'reward.train.lr', 'ppo.ppo.lr' or 'grpo.grpo.lr'"),
    ("loop", "rloo.iteration=3", "'rloo.grpo.iterations'"),  # in the section typed, of the sections alike
])
def test_a_mistyped_key_says_what_it_probably_meant(stage, override, meant):
    with pytest.raises(ConfigError) as err:
        load_config(config_class(stage), None, [override])
    assert str(err.value).endswith(f"; did you mean {meant}?"), str(err.value)


def test_nothing_is_suggested_when_nothing_is_close():
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, ["xyzzy=3"])
    assert str(err.value) == "unknown config key 'xyzzy'"


def test_a_stage_is_named_with_a_space_or_a_dash():
    from alignloop.reward.config import RewardEvalConfig

    assert config_class(["reward", "eval"]) is config_class("reward-eval") is config_class("reward_eval") \
        is RewardEvalConfig
    with pytest.raises(ConfigError, match="did you mean 'reward-eval'"):
        config_class(["reward", "evl"])


# ---- prompts: one shape in every stage -----------------------------------------------------

PROMPT_STAGES = ["sample", "ppo", "grpo", "bon", "eval"]


@pytest.mark.parametrize("stage", PROMPT_STAGES)
def test_every_stage_names_prompts_and_response_length_alike(stage):
    cls = config_class(stage)
    short = load_config(cls, None, ["prompts=p.jsonl", "prompts.field=q", "sampling.max_new_tokens=7"])
    long = load_config(cls, None, ["prompts.path=p.jsonl", "prompts.field=q", "sampling.max_new_tokens=7"])
    assert short == long
    assert (short.prompts.path, short.prompts.field, short.sampling.max_new_tokens) == ("p.jsonl", "q", 7)
    # The path alone and its section's other keys combine in either order, and across file and command line.
    assert load_config(cls, None, ["prompts.limit=3", "prompts=p.jsonl"]).prompts.limit == 3


def test_a_prompt_file_in_the_yaml_file_keeps_its_limit_from_the_command_line(tmp_path):
    config_file = tmp_path / "eval.yaml"
    config_file.write_text("prompts: held_out.jsonl\n")
    cfg = load_config(config_class("eval"), config_file, ["prompts.limit=5"])
    assert (cfg.prompts.path, cfg.prompts.limit) == ("held_out.jsonl", 5)


def test_sample_reads_its_old_flat_names():
    from alignloop.sample.config import SampleConfig

    old = load_config(SampleConfig, None, ["prompts=p.txt", "prompt_field=q", "n_prompts=5", "max_new_tokens=12",
                                           "temperature=0.7", "top_p=0.9", "top_k=5", "batch_size=8"])
    new = load_config(SampleConfig, None, ["prompts.path=p.txt", "prompts.field=q", "prompts.limit=5",
                                           "sampling.max_new_tokens=12", "sampling.temperature=0.7",
                                           "sampling.top_p=0.9", "sampling.top_k=5", "sampling.batch_size=8"])
    assert old == new
    # A run.yaml of the old layout (prompts: null) reads too.
    assert SampleConfig.model_validate({"prompts": None, "n_prompts": 3}).prompts.limit == 3
    with pytest.raises(ConfigError, match="'n_prompts' and 'prompts.limit' are the same setting"):
        load_config(SampleConfig, None, ["n_prompts=5", "prompts.limit=6"])


def test_loop_prompts_set_sample_ppo_and_eval_at_once():
    from alignloop.loop.config import LoopConfig

    cfg = load_config(LoopConfig, None, ["prompts=mine.jsonl", "prompts.field=question"])
    for stage in (cfg.sample, cfg.ppo, cfg.eval):
        assert (stage.prompts.path, stage.prompts.field) == ("mine.jsonl", "question")
    # A stage that names its own keeps it (held-out prompts for eval).
    cfg = load_config(LoopConfig, None, ["prompts=mine.jsonl", "eval.prompts=held_out.jsonl"])
    assert (cfg.sample.prompts.path, cfg.ppo.prompts.path, cfg.eval.prompts.path) == \
        ("mine.jsonl", "mine.jsonl", "held_out.jsonl")
    # The resolved config (as run.yaml keeps it) reads back the same.
    import yaml

    assert LoopConfig.model_validate(yaml.safe_load(to_yaml(cfg))) == cfg


def test_a_loop_sample_override_keeps_the_rounds_defaults():
    from alignloop.loop.config import LoopConfig

    cfg = load_config(LoopConfig, None, ["sample.k=2"])  # was: every prompt, 96 tokens, all pairs
    assert (cfg.sample.k, cfg.sample.prompts.limit, cfg.sample.sampling.max_new_tokens,
            cfg.sample.pairs_per_prompt) == (2, 500, 64, 2)


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
