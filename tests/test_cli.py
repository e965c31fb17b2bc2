"""The symbreak command line: every tool listed, each one's --help, one flag style, one-line errors."""

import subprocess
import sys

import pytest

import symbreak
from configs import ArgumentParser, UserError

from helpers import ROOT


def test_help_lists_every_tool(capsys):
    assert symbreak.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in symbreak.COMMANDS)


@pytest.mark.parametrize("name", sorted(symbreak.COMMANDS))
def test_each_tool_has_help(name, capsys):
    try:
        code = symbreak.main([name, "--help"])
    except SystemExit as e:  # argparse ends --help with exit 0
        code = e.code
    assert code == 0
    assert capsys.readouterr().out.startswith(f"usage: symbreak {name} ")


@pytest.mark.parametrize("name", sorted(symbreak.COMMANDS))
def test_each_tool_run_as_a_module_names_itself_in_its_usage(name):
    """``python -m MODULE --help`` names the module (the trainer: ``python train.py``), never a file name."""
    module, leading, _ = symbreak.COMMANDS[name]
    typed = ["train.py"] if module == "trainer.cli" else ["-m", module, *leading]
    proc = subprocess.run([sys.executable, *typed, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python {' '.join(typed)} "), proc.stdout[:200]


def test_the_symbreak_command_leaves_sys_argv_as_it_found_it(capsys):
    before = list(sys.argv)
    assert symbreak.main(["nope"]) == 2
    with pytest.raises(SystemExit):
        symbreak.main(["export", "--help"])
    assert sys.argv == before
    assert "usage: symbreak export " in capsys.readouterr().out


def test_a_flag_is_accepted_with_underscores_and_hyphens():
    p = ArgumentParser()
    p.add_argument("--max_tokens", type=int, default=0)
    assert p.parse_args(["--max_tokens", "3"]).max_tokens == p.parse_args(["--max-tokens", "3"]).max_tokens == 3
    with pytest.raises(UserError, match="invalid int value"):
        p.parse_args(["--max_tokens", "three"])


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["nope"], "unknown tool 'nope'"),
        (["sample", "--tokens", "x"], "argument --tokens: invalid int value"),
        (["val", "no/such/run"], "run dir 'no/such/run' not found"),
        (["train", "--optim.name=adamw", "--optim.ecd.eta=5"], "optimizer 'ecd', but optim.name is 'adamw'"),
        (["train", "--optim.eta=5"], "'optim.eta' belongs in [optim.ecd]"),
        (["train", "--optim.adamw.eta=5"], "unknown config key 'optim.adamw.eta'"),
        (["train", "--optim.shampoo=5"], "unknown config key 'optim.shampoo'"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "symbreak", *argv], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
