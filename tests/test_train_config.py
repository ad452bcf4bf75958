"""The training config: presets, overrides, and errors that name the key."""

from __future__ import annotations

import glob
import os

import pytest

from jaxlm.train.__main__ import main
from jaxlm.train.config import Config, ConfigError, load_config

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")))


def test_no_arguments_gives_the_embedded_lora_sft_default():
    cfg = load_config()
    assert cfg.task == "sft" and cfg.model.lora.rank > 0
    assert cfg.model.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert [s.path for s in cfg.data.train] == ["tfds:jaxlm_chatterbot:train", "tfds:jaxlm_chitchat:train"]
    assert cfg.data.eval, "the default evaluates on a held-out split"


def test_the_default_preset_is_the_embedded_default():
    assert load_config(os.path.join(os.path.dirname(CONFIGS[0]), "sft_lora.yaml")) == Config()


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_preset_loads_and_validates(path):
    load_config(path)


def test_dotted_overrides_are_parsed_as_yaml_values():
    cfg = load_config(None, ["train.steps=7", "train.learning_rate=3e-4", "model.lora.targets=q,v",
                             "data.train=[{path: a.jsonl, weight: 2}, b.txt]", "checkpoint.async_save=false"])
    assert cfg.train.steps == 7 and cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.model.lora.targets == ["q", "v"]
    assert [(s.path, s.weight) for s in cfg.data.train] == [("a.jsonl", 2.0), ("b.txt", 1.0)]
    assert cfg.checkpoint.async_save is False


def test_own_training_data_is_not_scored_on_the_default_evaluation_chats(tmp_path):
    """The default data.eval (the shipped chats) goes with the default data.train: beside other training data
    it failed a plain-text run whose tokenizer has no chat template, and hid data.eval_fraction."""
    assert load_config(None, ["data.train=[a.txt]"]).data.eval == []
    preset = tmp_path / "preset.yaml"
    preset.write_text("data:\n  train: [a.txt]\n  eval_fraction: 0.1\n")
    assert load_config(str(preset)).data.eval == []
    assert [s.path for s in load_config(str(preset), ["data.eval=[b.txt]"]).data.eval] == ["b.txt"]
    assert load_config(None, ["train.steps=3"]).data.eval == Config().data.eval


def test_unknown_key_names_the_closest_valid_one():
    expected = r"unknown config key 'train.lerning_rate'; did you mean 'train.learning_rate'"
    with pytest.raises(ConfigError, match=expected):
        load_config(None, ["train.lerning_rate=1e-3"])


def test_unknown_key_inside_a_source_is_rejected():
    with pytest.raises(ConfigError, match=r"data.train\[0\].wieght.*'data.train\[0\].weight'"):
        load_config(None, ["data.train=[{path: a.jsonl, wieght: 2}]"])


@pytest.mark.parametrize("override, message", [
    ("train.steps=ten", r"train.steps: expected int, got 'ten'"),
    ("train.schedule=step", r"train.schedule='step' is not one of cosine, linear, constant"),
    ("train.compute_dtype=float16", r"train.compute_dtype='float16' is not one of float32, bfloat16"),
    ("task=translation", r"task='translation' is not one of"),
    ("train.grad_accum=3", r"train.batch_size=4 is not divisible by train.grad_accum=3"),
    ("export.gguf=q4_k", r"export.gguf='q4_k' is not one of f32, f16, q8_0"),
])
def test_values_are_type_and_range_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, message", [
    (["task=classification"], "GGUF files hold causal language models; task is classification"),
    (["model.prompt_tuning.num_virtual_tokens=4"], "llama.cpp has no virtual tokens"),
])
def test_export_gguf_is_refused_where_the_file_would_not_hold_the_result(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["export.gguf=q8_0", *overrides])


def test_cli_reports_a_bad_key_in_one_line_with_exit_code_2(capsys):
    assert main(["train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "config error: unknown config key 'train.stepz'; did you mean 'train.steps'?"


def test_cli_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for key in ("model.lora.rank", "train.compute_dtype", "eval.early_stopping_patience", "mesh.fsdp", "output_dir"):
        assert key in out


@pytest.mark.parametrize("override, message", [
    ("data.mixing=bandit", None),  # the default has two training sources to learn a mixture of
    ("data.mixing=round_robin", r"data.mixing='round_robin' is not one of static, temperature, bandit"),
    ("data.train=[{path: a.jsonl, weight: -1}]", r"data.train\[0\].weight must be >= 0, got -1"),
    ("data.temperature=0", None),  # static mixing ignores the temperature
    ("data.eval_fraction=1.0", r"data.eval_fraction must be in \[0, 1\), got 1.0"),
    ("data.augment.char_typo_p=1.5", r"data.augment.char_typo_p must be in \[0, 1\], got 1.5"),
    ("data.train=[{path: a.jsonl, format: xlsx}]", r"data.train\[0\].format='xlsx' is not one of auto"),
    ("data.on_error=ignore", r"data.on_error='ignore' is not one of raise, skip"),
    ("eval.every=-1", r"eval.every must be >= 0, got -1"),
    ("eval.test_steps=-1", r"eval.test_steps must be >= 0, got -1"),
    ("data.test=[{path: t.jsonl, weight: -1}]", r"data.test\[0\].weight must be >= 0, got -1"),
    ("mesh.fsdp=0", r"mesh.fsdp must be >= 1, got 0"),
    ("mesh.data=0", r"mesh.data must be >= 1, or -1"),
    ("model.lora.targets=[]", r"model.lora.targets is empty"),
])
def test_the_data_section_and_the_rest_are_checked_when_loading(override, message):
    if message is None:
        load_config(None, [override])
        return
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_temperature_must_be_positive_for_temperature_mixing():
    with pytest.raises(ConfigError, match=r"data.temperature must be > 0"):
        load_config(None, ["data.mixing=temperature", "data.temperature=0"])


@pytest.mark.parametrize("override, message", [
    ("data.bandit.algorithm=ucb", r"data.bandit.algorithm='ucb' is not one of exp3"),
    ("data.bandit.reward=perplexity", r"data.bandit.reward='perplexity' is not one of progress, loss"),
    ("data.bandit.floor=0.5", r"data.bandit.floor=0.5 must be >= 0 and below 1/2"),
    ("data.bandit.smoothing=1", r"data.bandit.smoothing must be in \[0, 1\), got 1"),
    ("data.bandit.update_every=7", r"data.bandit.update_every=7 must be a multiple of train.log_every=5"),
    ("data.bandit.arms=clusters", r"data.bandit.arms='clusters' is not one of sources"),
])
def test_the_bandit_block_is_checked_when_mixing_is_bandit(override, message):
    load_config(None, [override])  # ignored by static mixing
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["data.mixing=bandit", override])


def test_early_stopping_needs_evaluation_data():
    with pytest.raises(ConfigError, match=r"eval.early_stopping_patience=2 needs evaluation data"):
        load_config(None, ["data.eval=[]", "eval.early_stopping_patience=2"])
    load_config(None, ["data.eval=[]", "data.eval_fraction=0.1", "eval.early_stopping_patience=2"])


@pytest.mark.parametrize("overrides, devices, message", [
    (["mesh.fsdp=2"], 1, r"mesh.fsdp=2 must divide the 1 available devices"),
    (["mesh.data=2"], 1, r"mesh.data=2 x mesh.fsdp=1 = 2 devices, but 1 are available"),
    (["train.batch_size=4"], 8, r"4 sequences per micro-batch must be divisible by the 8 devices"),
    (["model.path=nowhere/model.gguf"], 1, r"model.path='nowhere/model.gguf': no such model folder"),
    (["data.eval=[nowhere.jsonl]"], 1, r"data.eval\[0\].path='nowhere.jsonl': no such file or folder"),
    (["data.test=[nowhere.jsonl]"], 1, r"data.test\[0\].path='nowhere.jsonl': no such file or folder"),
])
def test_the_environment_check_names_the_key(overrides, devices, message):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match=message):
        cfg.check_environment(devices)


def test_the_default_config_fits_one_device():
    load_config().check_environment(1)


@pytest.mark.parametrize("override, message", [
    (["data.mixing=bandit", "data.train=[missing.jsonl]"],
     "config error: data.mixing='bandit' learns how to mix sources, but data.train has 1"),
    ("mesh.fsdp=2", "config error: mesh.fsdp=2 must divide the 1 available devices"),
    ("data.train=[missing.jsonl]", "config error: data.train[0].path='missing.jsonl': no such file or folder"),
])
def test_cli_stops_on_a_config_error_before_any_work(override, message, monkeypatch, capsys):
    import jaxlm.train.loop

    def must_not_run(*args, **kwargs):
        raise AssertionError("train() ran on a bad config")

    monkeypatch.setattr(jaxlm.train.loop, "train", must_not_run)
    assert main(["--no-progress", *([override] if isinstance(override, str) else override)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
