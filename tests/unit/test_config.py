"""Typed configs: presets, dotted overrides, every error naming the key, and the CLI's one-line errors."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml

from lori.cli import COMMANDS, command, main, parser
from lori.config import (Config, MethodName, absolute_paths, config_from_dict, dump_config, load_config, parse_overrides,
                         save_config)
from lori.errors import ConfigError
from lori.methods import METHODS
from lori.training.optim import batch_arithmetic

from conftest import REPO

PRESETS = sorted((REPO / "configs").rglob("*.yaml"))  # configs/*.yaml and subfolders (configs/paper/)


# ------------------------------------------------------------------------------------------------ loading


def test_defaults_load():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.method in METHODS or cfg.method in typing.get_args(MethodName)
    assert isinstance(cfg.train.lr, float)
    assert cfg.data.digits == [4, 4]


def test_preset_plus_dotted_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("method: no-cot\ntrain:\n  steps: 7\n  lr: 1.0e-3\n  grad_clip: 1.0\ndata:\n  digits: [2, 2]\n")
    cfg = load_config(preset, ["train.lr=3e-4", "data.digits=[3,3]", "train.grad_clip=null", "model.arch=gpt2"])
    assert cfg.method == "no-cot"
    assert cfg.train.steps == 7  # from the preset, untouched by overrides
    assert cfg.train.lr == 0.0003 and type(cfg.train.lr) is float
    assert cfg.data.digits == [3, 3]
    assert cfg.train.grad_clip is None
    assert cfg.model.arch == "gpt2"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("train.lr=3e-4", 0.0003),
        ("train.lr=1E-3", 0.001),
        ("train.lr=2", 2),
        ("data.digits=[3,3]", [3, 3]),
        ("train.grad_clip=null", None),
        ("train.tensorboard=true", True),
        ("method=no-cot", "no-cot"),
        ("out_dir=out/a.b", "out/a.b"),  # a dotted path stays a string
    ],
)
def test_parse_overrides_values(item, expected):
    ((key, value),) = parse_overrides([item])
    assert key == item.split("=", 1)[0]
    assert value == expected and type(value) is type(expected)


def test_int_is_accepted_for_float_fields():
    cfg = load_config(None, ["train.lr=1"])
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("trian.steps=1", "trian", ["method", "out_dir", "data", "model", "train", "eval"]),
        ("frobnicate=1", "frobnicate", ["method", "out_dir", "data", "model", "train", "eval"]),
        ("train.lrr=1", "train.lrr", ["steps", "global_batch", "micro_batch", "lr", "grad_clip"]),
        ("model.hidden=8", "model.hidden", ["hidden_size", "num_layers", "arch"]),
    ],
)
def test_unknown_key_names_dotted_key_and_lists_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert key in msg
    assert "allowed keys" in msg
    for name in allowed:
        assert name in msg, (name, msg)


def test_bad_literal_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["method=foo"])
    msg = str(e.value)
    assert "method" in msg and "'foo'" in msg
    for name in typing.get_args(MethodName):
        assert repr(name) in msg
    with pytest.raises(ConfigError, match=r"model\.arch.*'llama'.*'qwen2'.*'gpt2'"):
        load_config(None, ["model.arch=bert"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.steps=abc", "train.steps"),
        ("train.steps=1.5", "train.steps"),
        ("train.lr=fast", "train.lr"),
        ("train.tensorboard=maybe", "train.tensorboard"),
        ("data.digits=4", "data.digits"),
        ("data.digits=[4,x]", "data.digits[1]"),
        ("train.grad_clip=abc", "train.grad_clip"),
        ("train=3", "train"),
    ],
)
def test_wrong_type_names_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.steps=0", "train.steps"),
        ("train.lr=-1", "train.lr"),
        ("data.digits=[4]", "data.digits"),
        ("model.hidden_size=30", "model.hidden_size"),
        ("train.grad_clip=0", "train.grad_clip"),
    ],
)
def test_bad_value_names_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_yaml_file_with_bad_key_names_the_file(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError) as e:
        load_config(preset)
    msg = str(e.value)
    assert str(preset) in msg and "train.stpes" in msg and "steps" in msg


def test_missing_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=re.escape(str(bad))):
        load_config(bad)


@pytest.mark.parametrize(("global_batch", "micro", "world", "accum"), [(16, 8, 1, 2), (16, 4, 2, 2), (64, 64, 1, 1)])
def test_batch_arithmetic(global_batch, micro, world, accum):
    cfg = load_config(None, [f"train.global_batch={global_batch}", f"train.micro_batch={micro}"])
    assert batch_arithmetic(cfg, world) == accum


@pytest.mark.parametrize(("global_batch", "micro", "world"), [(16, 6, 1), (16, 8, 3), (10, 4, 1)])
def test_batch_arithmetic_rejects_non_multiple(global_batch, micro, world):
    cfg = load_config(None, [f"train.global_batch={global_batch}", f"train.micro_batch={micro}"])
    with pytest.raises(ConfigError) as e:
        batch_arithmetic(cfg, world)
    msg = str(e.value)
    assert "train.global_batch" in msg and "train.micro_batch" in msg


# ------------------------------------------------------------------------------------------------ round trip


def test_dump_and_reload_round_trips(tmp_path):
    cfg = load_config(None, ["method=no-cot", "train.lr=3e-4", "data.digits=[3,5]", "train.grad_clip=0.5",
                             "model.arch=qwen2", "eval.limit=7", "train.stop_at=3"])
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    # A saved config holds absolute paths (its relative out_dir, out/run, is taken from the working directory), so
    # it loads back to the same folders from anywhere; with absolute paths it round-trips exactly.
    assert again == absolute_paths(cfg) and again.out_dir == os.path.abspath("out/run")
    assert dump_config(again) == dump_config(absolute_paths(cfg))
    save_config(again, tmp_path / "d.yaml")
    assert load_config(tmp_path / "d.yaml") == again
    assert dataclasses.asdict(load_config(tmp_path / "d.yaml")) == dataclasses.asdict(again)


def test_default_dump_round_trips():
    cfg = Config()
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


# ------------------------------------------------------------------------------------------------ presets


def test_there_are_presets():
    assert PRESETS, "configs/*.yaml: no presets found"


@pytest.mark.parametrize("preset", PRESETS, ids=[p.relative_to(REPO / "configs").as_posix() for p in PRESETS])
def test_preset_loads_and_documents_its_command(preset):
    cfg = load_config(preset)
    assert cfg.method in METHODS or cfg.method in typing.get_args(MethodName)
    first = preset.read_text().splitlines()[0]
    assert first.startswith("#"), f"{preset.name}: the first line must be a comment"
    text = preset.read_text()
    rel = preset.relative_to(REPO).as_posix()
    commands = [line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")]
    runs = [c for c in commands if c.startswith("lori train") and rel in shlex.split(c)]
    assert runs, f"{preset.name}: the leading comment must show the command `lori train {rel}` that runs it"
    # The documented command parses to this preset (with its overrides, if any) and those load too.
    argv = shlex.split(runs[0].split("#")[0])[1:]
    args = parser("train").parse_args(argv)
    assert args.verb == "train" and args.config == rel
    load_config(preset, args.overrides)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_unknown_key_exits_2_with_one_line(capsys):
    assert main(["train", "train.lrr=1"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("lori: error:")
    assert "train.lrr" in err
    assert "\n" not in err
    assert "Traceback" not in captured.err and "Traceback" not in captured.out


def test_cli_bad_preset_path_exits_2(capsys, tmp_path):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.yaml" in err and "\n" not in err


def test_cli_bad_method_lists_the_methods(capsys):
    assert main(["train", "method=foo"]) == 2
    err = capsys.readouterr().err.strip()
    listed = set(re.findall(r"'([^']+)'", err.split("choose one of", 1)[1]))
    assert listed == set(METHODS)


def test_cli_method_choices_match_registry():
    assert set(typing.get_args(MethodName)) == set(METHODS)
    train_help = COMMANDS["train"]
    listed = set(re.search(r"method: ([^)]*)", train_help).group(1).replace(" ", "").split("|"))
    assert listed == set(METHODS), train_help


def test_the_command_table_parser_and_modules_agree():
    """Every verb of the table has its module in lori/commands/ (and every module a verb), each module has what the
    table calls, and the parser offers exactly the table's verbs, each parsing with its own module's arguments."""
    folder = Path(command("train").__file__).parent
    files = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    assert files == {v.replace("-", "_") for v in COMMANDS}
    for verb in COMMANDS:
        mod = command(verb)
        assert callable(mod.add_arguments)
        assert callable(getattr(mod, "run_argv" if getattr(mod, "PASS_THROUGH", False) else "run"))
        verbs = parser(verb)._subparsers._group_actions[0].choices
        assert list(verbs) == list(COMMANDS)
    assert parser("eval").parse_args(["eval", "run", "--out", "o"]).out == "o"


def test_cli_overrides_after_options_are_kept():
    from lori.cli import _parse

    args = _parse(["eval", "run", "--out", "o", "eval.limit=8"])
    assert args.checkpoints == ["run", "eval.limit=8"] and args.out == "o"
    with pytest.raises(SystemExit):
        _parse(["eval", "run", "--out", "o", "--bogus"])
