"""Every flag of every tool, given a wrong type or an out-of-range value, ends with one `error:` line, a
non-zero exit and no traceback.

The keys are found, not listed: train's are the fields of every config dataclass (each section, each
optimizer's table, each task's table), a `symbreak TOOL`'s are the actions of the parser the tool builds.
Configs are validated in this process (`load_config`, as train.py does first); a few flags also go
through real processes, to see the exit code and stderr a user sees.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import torch

import configs
import optim
import symbreak
import train
from configs import Config, UserError, build_section, key_name, load_config
from runtime import Context
from tasks import TASKS, task_class

from helpers import ROOT, args, child_env, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")

WRONG_TYPE: dict[Any, list[Any]] = {int: ["abc", 1.5, True], float: ["abc", True, [1.0]], bool: ["maybe", 1]}
STR_WRONG = [5, 1.5, [1]]  # a string key given a number or a list (in a file: on the command line it is text)
OUT_OF_RANGE: dict[Any, list[Any]] = {int: [-1], float: [math.nan, math.inf, -math.inf]}


@dataclasses.dataclass(frozen=True)
class Key:
    table: str  # "run", "optim.adamw", "task"
    name: str
    kind: Any
    default: Any
    context: tuple[str, ...] = ()  # what makes the key count: the optimizer (or task) it belongs to

    def __str__(self) -> str:
        return f"{self.table}.{self.name}"


def fields(cls: type, table: str, context: tuple[str, ...] = ()) -> list[Key]:
    hints = typing.get_type_hints(cls)
    return [
        Key(table, key_name(f.name), hints[f.name], getattr(cls(), f.name), context)
        for f in dataclasses.fields(cls)
        if not f.metadata.get("tables") and not f.metadata.get("internal")
    ]


def config_keys() -> list[Key]:
    """Every key train.py reads: the sections, each optimizer's table, each task's table."""
    keys = []
    for section in dataclasses.fields(Config):
        value = getattr(Config(), section.name)
        if dataclasses.is_dataclass(value):
            keys += fields(type(value), section.name)
    for name, module in optim.OPTIMIZERS.items():
        keys += fields(module.Options, f"optim.{name}", (f"--optim.name={name}",))
    for name in TASKS:
        task_config = getattr(task_class(name), "config_class", None)
        if task_config is not None:
            keys += fields(task_config, "task", (name,))
    return keys


KEYS = config_keys()


def task_configs() -> dict[str, Path]:
    """A config of configs/small_tasks for each task that has one (the first, by file name)."""
    found: dict[str, Path] = {}
    for path in sorted((configs.CONFIG_DIR / "small_tasks").glob("*.toml")):
        found.setdefault(configs.read_toml(path)["task"]["name"], path)
    return found


TASK_CONFIGS = task_configs()


def load(key: Key, value: Any, via: str, tmp_path: Path) -> None:
    """Validate ``key = value`` as train.py would, given on the command line or in a config file."""
    if key.table == "task":  # its task validates it, as the trainer's start builds the task and its model
        name = key.context[0]
        build_section(task_class(name).config_class, {"name": name, key.name: value}, "task")
        if name in TASK_CONFIGS:
            text = configs.to_toml({"task": {key.name: value}})
            (tmp_path / "t.toml").write_text(f"inherit = '{TASK_CONFIGS[name]}'\n{text}")
            cfg = optim.resolve(load_config(tmp_path / "t.toml", ["--run.device=cpu"]))
            task_class(name)(cfg, Context(device=torch.device("cpu"))).build_model()
        return
    if via == "cli":
        text = "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value).lower()
        cfg = load_config(None, [*key.context, f"--{key}={text}"])
    else:
        table = key.table.split(".")
        path = tmp_path / "c.toml"
        body = configs.to_toml({table[0]: {key.name: value} if len(table) == 1 else {table[1]: {key.name: value}}})
        path.write_text(f"inherit = '{configs.DEFAULT_CONFIG}'\n{body}")
        cfg = load_config(path, list(key.context))
    optim.resolve(cfg)  # the optimizer tables are validated here


def refusal(key: Key, value: Any, via: str, tmp_path: Path) -> str | None:
    """The error ``key = value`` gets (None: accepted); anything but a UserError fails the test."""
    try:
        load(key, value, via, tmp_path)
    except UserError as e:
        assert "\n" not in str(e), str(e)
        return str(e)
    return None


def names(error: str, key: Key) -> bool:
    """The error names the key: in full, or (a task's check of several keys at once) by its own name."""
    return str(key) in error or key.table == "task" and re.search(rf"\b{re.escape(key.name)}\b", error) is not None


def test_the_walk_finds_the_keys():
    found = {str(k) for k in KEYS}
    assert {"run.seed", "model.n_embd", "symmetry.q_std_min", "optim.adamw.lr", "train.max_steps"} <= found
    assert sum(k.table == "task" for k in KEYS) > 20 and sum(k.table.startswith("optim.") for k in KEYS) > 20


@pytest.mark.parametrize("key", KEYS, ids=lambda k: f"{k}[{k.context[0]}]" if k.table == "task" else str(k))
def test_every_config_key_refuses_a_wrong_type_and_an_out_of_range_value(key, tmp_path):
    kind = key.kind
    list_of = typing.get_origin(kind) is list
    if kind is str:
        wrong = STR_WRONG
    elif list_of:
        wrong = ["abc", 5]
    else:
        wrong = WRONG_TYPE.get(kind, [])
    for via in ("file", "cli"):
        for value in wrong:
            if via == "cli" and (kind is str or list_of and value == "abc"):
                continue  # on the command line any text is a string
            if via == "cli" and key.table == "task":
                continue  # the task's table is validated once, from its values
            error = refusal(key, value, via, tmp_path)
            assert error is not None, f"{key} accepted {value!r} ({via})"
            assert names(error, key), error
    item = typing.get_args(kind)[0] if list_of else kind
    for value in OUT_OF_RANGE.get(item, []):  # no key means nan or inf, and none counts below zero
        value = [value] * max(len(key.default), 1) if list_of else value
        error = refusal(key, value, "file", tmp_path)
        assert error is not None, f"{key} accepted {value!r}"
        assert names(error, key), error


def test_an_unknown_choice_is_refused_for_every_key_that_has_choices(tmp_path):
    """A string key with a fixed set of values names them when given another; the others take any text."""
    refused = []
    for key in KEYS:
        if key.kind is str and key.table != "task" and key.default not in ("", None):
            error = refusal(key, "no-such-value", "cli", tmp_path)
            if error is not None:
                assert str(key) in error and "no-such-value" in error, error
                refused.append(str(key))
    assert {"run.device", "run.dtype", "model.mlp", "symmetry.mode", "optim.schedule"} <= set(refused)


# ------------------------------------------------------------------------------------ symbreak TOOL flags


class Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def tool_parser(name: str) -> argparse.ArgumentParser:
    """The parser ``symbreak NAME`` builds (the subcommand's own for a tool that has them)."""
    module, leading, _ = symbreak.COMMANDS[name]

    def grab(self, *a, **k):
        raise Captured(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(configs.ArgumentParser, "parse_known_args", grab)
        with pytest.raises(Captured) as got:
            importlib.import_module(module).main([*leading, "--help"])
    parser = got.value.parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[leading[0]]
    return parser


TOOLS = [name for name, (module, _, _) in symbreak.COMMANDS.items() if module != "trainer.cli"]  # train: above


def valued_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.nargs != 0 and a.dest != "help"]


def number(action: argparse.Action) -> str | None:
    """"int" or "float" for a numeric flag (the project's parser checks their range: its types keep the names)."""
    name = getattr(action.type, "__name__", None)
    return name if name in ("int", "float") else None


def wrong_values(action: argparse.Action) -> list[str]:
    if action.choices is not None:
        return ["no-such-choice"]
    return {"int": ["abc", "1.5"], "float": ["abc"]}.get(number(action), [])  # text: any value is text


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_flag_refuses_a_wrong_type(tool, capsys):
    _, leading, _ = symbreak.COMMANDS[tool]
    walked = 0
    for action in valued_flags(tool_parser(tool)):
        for value in wrong_values(action):
            assert symbreak.main([tool, action.option_strings[0], value]) == 2
            line = one_line_error(capsys.readouterr().err)
            assert action.option_strings[0] in line and f"symbreak {tool} --help" in line, line
            walked += 1
    assert walked or not any(number(a) or a.choices for a in valued_flags(tool_parser(tool)))


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert train.main(args(data_dir, root, "done", steps=2)) == 0
    return root / "done"


RUN_DIR_TOOLS = [t for t in TOOLS if any(a.dest == "run_dir" and not a.option_strings for a in tool_parser(t)._actions)]


@pytest.mark.parametrize("tool", RUN_DIR_TOOLS)
def test_every_numeric_flag_of_a_run_dir_tool_is_refused_or_handled_out_of_range(tool, finished, tmp_path, capsys):
    """Below zero (and nan for a float): refused with one line, or a value the tool takes as it says."""
    parser = tool_parser(tool)
    required = [x for a in parser._actions if a.required and a.option_strings for x in (a.option_strings[0], "out")]
    required = [str(tmp_path / x) if x == "out" else x for x in required]
    for action in valued_flags(parser):
        values = {"int": ["-1"], "float": ["-1", "nan", "inf"]}.get(number(action), [])
        for value in values:
            code = symbreak.main([tool, str(finished), *required, "--device=cpu", action.option_strings[0], value])
            err = capsys.readouterr().err
            if code != 0:
                assert code == 2 and action.option_strings[0].lstrip("-") in one_line_error(err).replace("-", "_"), err


# ------------------------------------------------------------------------------------ as processes


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train.py", "--train.batch_size=abc"], "train.batch_size: expected an integer"),
        (["train.py", "--symmetry.q_mean=nan"], "symmetry.q_mean must be a finite number"),
        (["train.py", "--optim.name=sgdm", "--optim.sgdm.momentum=yes"], "optim.sgdm.momentum"),
        (["-m", "symbreak", "sample", "RUN", "--tokens", "abc"], "argument --tokens: invalid int value"),
        (["-m", "symbreak", "verify", "CONFIG", "--seeds", "1.5"], "argument --seeds: invalid int value"),
    ],
)
def test_a_sample_of_bad_flags_as_real_processes(argv, needle, tmp_path):
    argv = [a.replace("RUN", str(tmp_path)).replace("CONFIG", str(tmp_path / "c.toml")) for a in argv]
    proc = subprocess.run(
        [sys.executable, *argv, f"--run.dir={tmp_path}"] if argv[0] == "train.py" else [sys.executable, *argv],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert needle in one_line_error(proc.stderr)
