"""``symbreak``: one command line for every tool of the workbench.

    symbreak train [CONFIG] [--section.key=value ...]   # = python train.py ...
    symbreak val RUN_DIR --tokens 1048576               # = python -m eval.val ...
    symbreak TOOL --help                                # each tool's own flags

Every tool is also a module (``python -m eval.logic ...``); this command only dispatches to it, so both
spellings take the same flags (``--snake_case``; hyphens work too), pick the device alike (``--device
auto``: a GPU when there is one) and report a user error as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import importlib
import sys

from trainer import exit_process, ignore_stop_signals

# name: (module with main(argv), fixed leading arguments, what it does)
COMMANDS: dict[str, tuple[str, list[str], str]] = {
    "train": ("trainer.cli", [], "train a model or run a small task from a config (python train.py)"),
    "prepare": ("data.prepare", [], "tokenize a corpus into shards: builtin, openwebtext, fineweb-edu, files"),
    "sample": ("eval.sample", [], "generate text from a trained run"),
    "val": ("eval.val", [], "validation loss of a run on a fixed token budget"),
    "logic": ("eval.logic", [], "the logic-puzzle suite on a run"),
    "alignment": ("eval.alignment", [], "which tokens' keys align with the query-bias direction"),
    "report": ("eval.report", [], "tables and plots comparing runs"),
    "grid": ("eval.grid", [], "train an optimizer x symmetry x seed grid (or write its cluster script), then report"),
    "study": ("eval.study", [], "a paired study: each arm's rate swept, all arms on the same seeds, then the report"),
    "export": ("eval.hf", ["export"], "write a run as a Hugging Face model folder"),
    "import": ("eval.hf", ["import"], "make a run dir from GPT-2 weights"),
    "width-sweep": ("eval.width_sweep", [], "width a power network needs to compose k group elements"),
    "verify": ("eval.verify", [], "pass rate of each check of a small task over run and data seeds"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, _, about) in COMMANDS.items()]
    return "usage: symbreak TOOL [ARGS ...]   (symbreak TOOL --help for its flags)\n\ntools:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown tool '{name}'; use one of: {', '.join(COMMANDS)} (symbreak --help)", file=sys.stderr)
        return 2
    module, leading, _ = COMMANDS[name]
    # The tool's usage line names the command as typed (configs.program reads it): "symbreak NAME", or
    # "symbreak" where the tool's own subcommand (the leading argument) adds the NAME.
    typed, sys.argv[0] = sys.argv[0], "symbreak" if leading else f"symbreak {name}"
    try:
        # imported only when chosen, so that a tool's optional dependencies (transformers, datasets) load
        # only for the tools that need them
        code = importlib.import_module(module).main([*leading, *rest])
    finally:
        sys.argv[0] = typed
    return code or 0


def entry() -> None:
    """The console script: a distributed run (``torchrun -m symbreak train``) ends as train.py does."""
    code = main()
    ignore_stop_signals()
    exit_process(code)


if __name__ == "__main__":
    entry()
