"""Proves the config schema: YAML + dotted overrides fill the dataclasses, and every
bad key, type or value is refused with the key's name (and the section's valid keys).

Run: pytest tests/test_config.py
"""
import pytest

from charrnn_torch.training.config import build_config, dump_yaml, parse_override, read_yaml
from charrnn_torch.errors import UserError


def test_defaults_yaml_and_overrides_layer():
    cfg = build_config({"train": {"lr": 0.01, "batch_size": 8}}, ["train.lr=3e-3", "model.hidden_size=256", "device=cpu"])
    assert cfg.train.lr == 0.003 and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 8
    assert cfg.model.hidden_size == 256
    assert cfg.device == "cpu"
    assert cfg.train.optimizer == "adam"  # untouched default


def test_yaml_number_without_dot_is_a_number():
    assert build_config({"train": {"lr": "1e-3"}}).train.lr == 0.001


def test_resolved_config_round_trips():
    import yaml
    cfg = build_config({}, ["train.lr=0.5", "train.stateful=false"])
    again = build_config(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("values,overrides,needle", [
    ({"bogus": 1}, [], "unknown config key bogus; valid keys in top level: data, model, train, device, out_dir"),
    ({"train": {"lrr": 1}}, [], "unknown config key train.lrr; valid keys in train: batch_size"),
    ({}, ["model.hiden_size=3"], "unknown config key model.hiden_size"),
    ({"model": {"hidden_size": "big"}}, [], "model.hidden_size: expected an integer, got 'big'"),
    ({"model": {"hidden_size": 1.5}}, [], "model.hidden_size: expected an integer"),
    ({"model": {"hidden_size": True}}, [], "model.hidden_size: expected an integer"),
    ({"train": {"stateful": "yes please"}}, [], "train.stateful: expected true or false"),
    ({"train": 3}, [], "train: expected a mapping"),
    ({}, ["model.hidden_size=0"], "model.hidden_size: must be > 0"),
    ({}, ["model.num_layers=-1"], "model.num_layers: must be > 0"),
    ({}, ["train.batch_size=0"], "train.batch_size: must be > 0"),
    ({}, ["train.seq_len=0"], "train.seq_len: must be > 0"),
    ({}, ["train.max_steps=0"], "train.max_steps: must be > 0"),
    ({}, ["train.lr=0"], "train.lr: must be > 0"),
    ({}, ["train.lr=-1e-3"], "train.lr: must be > 0"),
    ({}, ["train.grad_clip=-1"], "train.grad_clip: must be >= 0"),
    ({}, ["data.val_fraction=0"], "data.val_fraction: must be in (0, 1)"),
    ({}, ["data.val_fraction=1"], "data.val_fraction: must be in (0, 1)"),
    ({}, ["data.stdlib_max_bytes=0"], "data.stdlib_max_bytes: must be a positive number of bytes"),
    ({}, ["train.optimizer=adamax"], "train.optimizer: must be one of adagrad, adam, adamw, rmsprop, sgd"),
    ({}, ["train.lr_schedule=linear"], "train.lr_schedule: must be one of constant, cosine, step"),
    ({}, ["device=tpu"], "device: must be auto, cpu, cuda, cuda:N or mps"),
    ({}, ["model.impl=magic"], "model.impl: must be one of loop, fused"),
    ({}, ["model.dropout=1.0"], "model.dropout: must be in [0, 1)"),
    ({}, ["train.max_minutes=-1"], "train.max_minutes: must be >= 0"),
    ({}, ["train.max_minutes=.nan"], "train.max_minutes: must be a finite number"),
    ({}, ["train.weight_decay=.inf"], "train.weight_decay: must be a finite number"),
    ({}, ["train.seed=-1"], "train.seed: must be in [0, 2**62]"),
    ({}, [f"train.max_steps={2**64}"], "train.max_steps: must be between -2**63 and 2**63 - 1"),
    ({}, ["train.threads=100000"], "train.threads: must be in [0, 4096]"),
])
def test_bad_values_name_the_key(values, overrides, needle):
    with pytest.raises(UserError) as e:
        build_config(values, overrides)
    assert needle in str(e.value)


@pytest.mark.parametrize("text,needle", [
    ("train.lr", "expected key=value"),
    ("=3", "expected key=value"),
    ("train.lr=[1, 2", "cannot parse value"),
    ("train.lr={a: 1}", "expected a single value"),
])
def test_malformed_overrides(text, needle):
    with pytest.raises(UserError, match="malformed override") as e:
        parse_override(text)
    assert needle in str(e.value)


def test_read_yaml_errors(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        read_yaml(lst)


def test_shipped_configs_are_valid():
    from pathlib import Path
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"shakespeare.yaml", "shakespeare_gpu.yaml", "tutorial.yaml"}
    for p in configs:
        build_config(read_yaml(p))


def test_build_config_leaves_its_input_alone():
    values = {"model": {"hidden_size": 32}}
    build_config(values, ["model.hidden_size=64"])
    assert values == {"model": {"hidden_size": 32}}


def test_every_key_is_explained_once_from_the_schema():
    """config.key_help reads the comment beside each field: every key has one, and a key with a
    list of allowed values names them from config.CHOICES."""
    from charrnn_torch.training import config
    help_of = config.key_help()
    keys = set(config.flatten(config.to_dict(config.Config())))
    assert set(help_of) == keys and all(len(text) > 10 for text in help_of.values())
    assert help_of["train.max_minutes"].startswith("a budget of training time")
    assert help_of["train.optimizer"].endswith("(one of adagrad, adam, adamw, rmsprop, sgd)")


def test_print_config_explains_each_key_and_is_still_yaml():
    import yaml

    from charrnn_torch.training import config
    cfg = build_config({"data": {"path": "my file: #1 'x'.txt"}}, ["train.lr=0.5", "train.cuda_graphs=off"])
    text = config.dump_yaml_explained(cfg)
    assert yaml.safe_load(text) == config.to_dict(cfg)  # values survive any character, comments stay comments
    help_of = config.key_help()
    line = next(li for li in text.splitlines() if li.strip().startswith("seq_len:"))
    assert line == f"  seq_len: 128  # {help_of['train.seq_len']}"


def test_train_help_lists_every_key(capsys):
    from charrnn_torch import cli
    from charrnn_torch.training import config
    with pytest.raises(SystemExit) as e:
        cli.parse("train", ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in config.key_help():
        assert f"  {key} " in out, key
