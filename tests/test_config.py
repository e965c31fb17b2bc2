"""Configs: TOML + overrides into typed sections; every user mistake is one clear line."""

import subprocess
import sys
from pathlib import Path

import pytest

from configs import CONFIG_DIR, UserError, from_dict, load_config, parse_overrides, read_toml, to_dict, to_toml

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_are_typed_and_merged():
    args = ["--optim.lr=0.01", "--optim.adamw.betas=[0.8,0.9]", "--symmetry.mode=bq", "--run.resume=true"]
    cfg = load_config(None, args)
    assert cfg.optim.lr == 0.01 and cfg.optim.sections["adamw"]["betas"].value == [0.8, 0.9]
    assert cfg.symmetry.mode == "bq" and cfg.run.resume is True
    assert cfg.train.max_steps == read_toml(CONFIG_DIR / "quickstart.toml")["train"]["max_steps"]


def test_ints_widen_to_floats_but_nothing_else_converts():
    assert load_config(None, ["--optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(UserError, match="train.max_steps: expected an integer"):
        load_config(None, ["--train.max_steps=ten"])
    with pytest.raises(UserError, match="expected true or false"):
        load_config(None, ["--run.resume=1"])


@pytest.mark.parametrize(
    "arg,suggestion",
    [("--optim.lrr=1", "optim.lr"), ("--symetry.mode=bq", "symmetry"), ("--train.max_step=3", "train.max_steps")],
)
def test_unknown_keys_name_the_closest_valid_one(arg, suggestion):
    with pytest.raises(UserError, match=f"did you mean '{suggestion}'"):
        load_config(None, [arg])


@pytest.mark.parametrize("text", ["nan", "1e3", "true", "007"])
def test_string_keys_keep_the_text_as_typed(text):
    assert load_config(None, [f"--run.name={text}"]).run.name == text


def test_malformed_argument_is_explained():
    with pytest.raises(UserError, match="--section.key=value"):
        parse_overrides(["lr=3"])


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(None, ["--optim.adamw.betas=[0.5,0.6]", '--run.name=a "quoted" name'])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(to_dict(cfg)))
    assert to_dict(from_dict(read_toml(path))) == to_dict(cfg)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--optim.lrr=1"], "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
        (["configs/nope.toml"], "config file 'configs/nope.toml' not found"),
        (["--optim.name=adam"], "unknown optimizer 'adam'"),
        (["--symmetry.mode=bk", "--train.max_steps=1"], "unknown symmetry.mode 'bk'"),
    ],
)
def test_cli_errors_are_one_line_with_nonzero_exit(args, needle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", *args, f"--run.dir={tmp_path}", "--train.progress=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


def test_a_keyword_field_is_written_without_its_underscore():
    from dataclasses import dataclass

    from configs import build_section

    @dataclass
    class Section:
        lambda_: float = 0.0

    assert build_section(Section, {"lambda": 3}, "task").lambda_ == 3.0
    with pytest.raises(UserError, match="did you mean 'task.lambda'"):
        build_section(Section, {"lambda_": 3}, "task")
