"""Typed run configuration: TOML files plus ``--section.key=value`` overrides.

Every section is a dataclass; loading validates names and types so that a typo is a one-line error
naming the closest valid key, never a silently ignored setting. Two parts are owned by the
components that use them and validated there: the ``task`` section (by the task, see ``tasks/``) and
the per-optimizer tables ``[optim.<name>]`` (by that optimizer, see ``optim/``). This module is the
bottom layer: it imports nothing of the project.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import keyword
import math
import os
import sys
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = CONFIG_DIR / "quickstart.toml"
MLPS = ("prelu", "gelu", "gelu_exact")  # model.mlp: the MLP activation
MODES = ("symmetric", "bq", "bqbv", "bv")  # symmetry.mode: which unlearned attention biases are drawn
POSITIONS = ("learned", "rope")  # model.position: a learned position embedding, or rotary q and k
BIAS_SCALES = ("absolute", "width")  # symmetry.scale: the biases as written, or sized to the model's width
TOKENIZERS = ("byte", "gpt2", "bpe")  # data.tokenizer (and what a dataset's meta.json may name)
MAX_SEED = 2**32 - 1  # run.seed: numpy's legacy seeding takes no more


class UserError(Exception):
    """A problem the user can fix: reported as one line, exit code 2, no traceback."""


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a command-line tool's main: a UserError becomes ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapper


def program() -> str:
    """The command as the user typed it, for usage lines: ``symbreak TOOL`` (the symbreak command puts it
    in sys.argv[0]), ``python -m package.module``, or ``python file.py``."""
    first = sys.argv[0] if sys.argv else ""
    if first.split(" ")[0] == "symbreak":
        return first
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return f"python {Path(first).name}"


def flag_count(text: str) -> int:
    """A tool's integer flag: text that is not an integer keeps argparse's "invalid int value" error."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def flag_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


flag_count.__name__, flag_float.__name__ = "int", "float"  # argparse names the type in its error


class ArgumentParser(argparse.ArgumentParser):
    """The project's one flag style for its tools: ``--snake_case`` flags (as the config keys are
    written), each also accepted with hyphens (``--max-tokens``); a bad argument is a UserError, so the
    tool prints one line and exits 2 like every other user error. Its usage line names the command as
    typed (``program()``), where argparse would name the file."""

    def __init__(self, *args: Any, **kwargs: Any):
        if not args:
            kwargs.setdefault("prog", program())
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        # every number a tool takes is a count, a size or a seed (>= 0), or a finite float: refused here,
        # once for all tools, rather than failing deep inside one
        if kwargs.get("type") in (int, float):
            kwargs["type"] = {int: flag_count, float: flag_float}[kwargs["type"]]
        spelled = list(names)
        for name in names:
            if name.startswith("--") and "_" in name and name.replace("_", "-") not in spelled:
                spelled.append(name.replace("_", "-"))
        return super().add_argument(*spelled, **kwargs)

    def add_device(self) -> None:
        self.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N, mps")

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")


def valid_device(name: str) -> bool:
    """auto, cpu, cuda, cuda:N or mps."""
    kind, colon, index = name.partition(":")
    return name in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and colon == ":" and index.isdigit())


def resolve_device(name: str, flag: str = "--device") -> str:
    """``auto`` is the first GPU when one is visible, else the CPU; a device this machine lacks is a
    UserError that names ``flag`` (the tool's flag, or ``--run.device``)."""
    require(valid_device(name), f"unknown {flag} '{name}'; use auto, cpu, cuda, cuda:N or mps")
    import torch  # only tools that run a model ask for a device

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "cuda" and int(index or 0) >= gpus:
        seen = f"{gpus} GPU(s) are visible" if gpus else "no GPU is visible (or torch was built without CUDA)"
        raise UserError(f"{flag}={name} asks for a GPU but {seen}; use {flag}=cpu or {flag}=auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{flag}=mps asks for Apple's GPU but it is not available here; use {flag}=cpu or {flag}=auto")
    return name


def what_is(path: Path) -> str:
    """What is at ``path``, to complete "'<path>' ..." in an error line, so that it names the real cause:
    "is a folder", "is a file", "is a symlink to '<target>', which does not exist" or "not found"."""
    if path.is_symlink() and not path.exists():
        return f"is a symlink to '{os.readlink(path)}', which does not exist"
    if path.is_dir():
        return "is a folder"
    if path.exists():
        return "is a file"
    return "not found"


def require(ok: bool, message: str) -> None:
    """A config value out of its range: the message names the key, the value and what would be valid."""
    if not ok:
        raise UserError(message)


def positive(section: str, **values: float) -> None:
    for key, v in values.items():
        require(math.isfinite(v) and v > 0, f"{section}.{key} must be a positive number, got {v}")


def non_negative(section: str, **values: float) -> None:
    for key, v in values.items():
        require(math.isfinite(v) and v >= 0, f"{section}.{key} must be >= 0, got {v}")


def at_least(section: str, minimum: int, **values: int) -> None:
    for key, v in values.items():
        require(v >= minimum, f"{section}.{key} must be >= {minimum}, got {v}")


def fraction(section: str, **values: float) -> None:
    for key, v in values.items():
        require(math.isfinite(v) and 0 <= v < 1, f"{section}.{key} must be in [0, 1), got {v}")


def finite(section: str, **values: float) -> None:
    for key, v in values.items():
        require(math.isfinite(v), f"{section}.{key} must be a finite number, got {v}")


def one_of(section: str, key: str, value: str, options: tuple[str, ...]) -> None:
    require(value in options, f"unknown {section}.{key} '{value}'; use one of: {', '.join(options)}")


@dataclass
class RunConfig:
    name: str = "quickstart"
    dir: str = "runs"  # run dirs live at <dir>/<name>
    seed: int = 1337
    resume: bool = False  # continue from the latest good checkpoint in the run dir
    checkpoint: str = ""  # resume from this checkpoint file instead of the latest
    init_from: str = ""  # a new run from these weights (a checkpoint file or a run dir): fresh optimizer
    overwrite: bool = False  # allow starting a fresh run in a non-empty run dir
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | float32 | bfloat16
    compile: bool = False
    wandb: str = "disabled"  # disabled | offline | online
    wandb_project: str = "symbreak"
    threads: int = 0  # CPU intra-op threads (torch.set_num_threads); 0 keeps torch's default

    def check(self) -> None:
        # one folder inside run.dir: a separator would nest it, a control character (a pasted newline)
        # would make a name no log line or shell command shows as it is
        ok = self.name.strip() not in ("", ".", "..") and not any(c in "/\\" or not c.isprintable() for c in self.name)
        require(
            ok,
            f"run.name must name a folder inside run.dir (one name: no '/', '\\' or control characters), "
            f"got {self.name!r}; pass --run.name=NAME",
        )
        require(self.dir.strip() != "", "run.dir must not be empty; pass --run.dir=PATH (default runs)")
        require(
            not (self.overwrite and (self.resume or self.checkpoint)),
            f"run.overwrite=true and {'run.resume=true' if self.resume else 'run.checkpoint'} contradict each other "
            "(replace the run, or continue it); keep only one of them",
        )
        require(valid_device(self.device), f"unknown run.device '{self.device}'; use auto, cpu, cuda, cuda:N or mps")
        one_of("run", "dtype", self.dtype, ("auto", "float32", "bfloat16"))
        one_of("run", "wandb", self.wandb, ("disabled", "offline", "online"))
        at_least("run", 0, threads=self.threads)


@dataclass
class ModelConfig:
    preset: str = ""  # a name from model.PRESETS fills n_layer/n_head/n_embd
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    vocab_size: int = 0  # 0: taken from the data's tokenizer
    mlp: str = "prelu"  # prelu | gelu (tanh approximation, GPT-2's) | gelu_exact (erf)
    prelu_mean: float = 0.2
    prelu_std: float = 1.0
    bias: bool = True
    dropout: float = 0.0
    position: str = "learned"  # learned (a position embedding) | rope (rotary q and k, no position embedding)
    rope_fraction: float = 0.5  # rope: the share of each head's dimensions that rotate (the first ones)
    rope_base: float = 10000.0  # rope: the wavelength base of the rotation frequencies

    def check(self) -> None:
        one_of("model", "mlp", self.mlp, MLPS)
        one_of("model", "position", self.position, POSITIONS)
        require(
            math.isfinite(self.rope_fraction) and 0 < self.rope_fraction <= 1,
            f"model.rope_fraction must be in (0, 1], got {self.rope_fraction}",
        )
        positive("model", rope_base=self.rope_base)
        if self.position != "rope":  # a knob nothing reads is refused, not ignored
            for key in ("rope_fraction", "rope_base"):
                require(
                    getattr(self, key) == getattr(ModelConfig, key),
                    f"model.{key} applies only with model.position=rope; set --model.position=rope or remove it",
                )
        at_least("model", 1, n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, block_size=self.block_size)
        at_least("model", 0, vocab_size=self.vocab_size)
        fraction("model", dropout=self.dropout)
        finite("model", prelu_mean=self.prelu_mean)
        non_negative("model", prelu_std=self.prelu_std)


@dataclass
class SymmetryConfig:
    """The unlearned attention biases: declared here once, read by the model and by the bias draws."""

    mode: str = "bqbv"  # symmetric | bq | bqbv | bv (value bias only)
    q_mean: float = 0.5
    q_std_min: float = 0.05  # bQ's std is spaced linearly from q_std_min to q_std_max over head_dim
    q_std_max: float = 0.15
    v_mean: float = 0.5
    v_std: float = 0.05
    k_bias: bool = False  # softmax cancels a key bias; kept to demonstrate that
    k_mean: float = 0.5
    k_std: float = 0.05
    per_head: bool = False  # one draw per head instead of one per layer shared by its heads
    learned: bool = False  # the control: the mode's biases are parameters, started at the means, never drawn
    # width: every mean and std times the model's query/value spread at init over GPT-2 124M's (model.gpt)
    scale: str = "absolute"

    def check(self) -> None:
        one_of("symmetry", "mode", self.mode, MODES)
        one_of("symmetry", "scale", self.scale, BIAS_SCALES)
        finite("symmetry", q_mean=self.q_mean, v_mean=self.v_mean, k_mean=self.k_mean)
        non_negative("symmetry", q_std_min=self.q_std_min, q_std_max=self.q_std_max, v_std=self.v_std, k_std=self.k_std)
        require(
            self.q_std_min <= self.q_std_max,
            f"symmetry.q_std_min ({self.q_std_min}) is above symmetry.q_std_max ({self.q_std_max}); "
            "the std rises from min to max across the head: swap them",
        )
        if self.learned:
            self.check_learned()

    def check_learned(self) -> None:
        """Learned biases are never drawn, so a spread set away from its default would be ignored: refused."""
        require(
            self.mode != "symmetric", "symmetry.learned=true needs biases to learn; set symmetry.mode to bq, bqbv or bv"
        )
        require(
            not self.k_bias,
            "symmetry.k_bias cannot be learned (softmax cancels it, so it gets no gradient); set symmetry.k_bias=false",
        )
        for key in ("q_std_min", "q_std_max", "v_std", "k_std"):
            require(
                getattr(self, key) == getattr(SymmetryConfig, key),
                f"symmetry.{key} has no effect with symmetry.learned=true (nothing is drawn); remove it",
            )


@dataclass
class OptimConfig:
    """What every optimizer shares. Each optimizer's own knobs, its learning rate included, live in its
    table ``[optim.<name>]`` (kept in ``sections``), declared and validated next to its code in optim/."""

    name: str = "adamw"  # adamw | sgdm | soap | ecd | per_neuron
    lr: float = 0.0  # > 0: the learning rate of the optimizer in use, replacing its section's lr
    schedule: str = "cosine"  # cosine | constant | linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine/linear decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables clipping
    decay: str = "matrices"  # which parameters take weight decay: matrices | matrices_and_embeddings | all
    sections: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"tables": True})

    def check(self) -> None:
        one_of("optim", "schedule", self.schedule, ("cosine", "constant", "linear"))
        one_of("optim", "decay", self.decay, ("matrices", "matrices_and_embeddings", "all"))
        non_negative("optim", lr=self.lr, grad_clip=self.grad_clip)
        at_least("optim", 0, warmup_steps=self.warmup_steps)
        require(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class DataConfig:
    # a prepared dataset folder under data.root; the built-in corpus's are made on first use: builtin-byte,
    # builtin-bpe<N> (a BPE of N tokens trained on it), builtin-gpt2, builtin (data.tokenizer's, bytes if unset)
    name: str = "builtin"
    path: str = ""  # a folder of token shards (*train*.bin / *val*.bin); overrides name
    root: str = "data/prepared"  # where prepared datasets live
    # The dataset's meta.json names its tokenizer. Set this for the builtin corpus (byte if unset) or for
    # shards made elsewhere that have no meta.json (llm.c's GPT-2 shards: gpt2).
    tokenizer: str = ""

    def check(self) -> None:
        one_of("data", "tokenizer", self.tokenizer, ("", *TOKENIZERS))


@dataclass
class TrainConfig:
    max_steps: int = 300
    max_tokens: int = 0  # >0: stop after this many tokens (overrides max_steps)
    batch_size: int = 16  # micro-batch size per process
    grad_accum: int = 1
    log_interval: int = 10
    checkpoint_interval: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    peak_flops: float = 0.0  # override the device's peak FLOP/s used for MFU
    progress: bool = True
    on_nonfinite: str = "stop"  # stop | skip
    max_skips: int = 10
    # Steps between the loop's host syncs (finiteness check, stop signal, gradient norm). 1 checks every
    # step; a larger value saves that work on tiny models, and a non-finite loss then stops the run.
    sync_interval: int = 1

    def check(self) -> None:
        one_of("train", "on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        at_least("train", 1, max_steps=self.max_steps, batch_size=self.batch_size, grad_accum=self.grad_accum)
        at_least("train", 1, log_interval=self.log_interval)
        at_least("train", 0, max_tokens=self.max_tokens, checkpoint_interval=self.checkpoint_interval)
        at_least("train", 0, keep_checkpoints=self.keep_checkpoints, max_skips=self.max_skips)
        non_negative("train", peak_flops=self.peak_flops)
        require(
            self.sync_interval >= 1 and (self.sync_interval == 1 or self.on_nonfinite == "stop"),
            "train.sync_interval must be >= 1, and 1 when train.on_nonfinite=skip; fix one of them",
        )


@dataclass
class EvalConfig:
    interval: int = 100  # validate every N steps (and at the end); 0: only at the end
    at_start: bool = True  # validate before the first step too (a fresh run; a resumed one has it)
    tokens: int = 65536  # validation token budget
    batch_size: int = 0  # 0: the training micro-batch size
    sample_tokens: int = 200  # length of the sample printed at the end (0: none)
    sample_prompt: str = "The "
    sample_temperature: float = 0.8  # of the sample printed at the end (0: the most likely token each time)
    sample_top_k: int = 40  # the sample draws from the k most likely tokens (0: from all)
    logic: bool = False  # run the logic suite at each validation
    logic_n: int = 20

    def check(self) -> None:
        at_least(
            "eval", 0, interval=self.interval, batch_size=self.batch_size, sample_tokens=self.sample_tokens,
            sample_top_k=self.sample_top_k,
        )
        non_negative("eval", sample_temperature=self.sample_temperature)
        at_least("eval", 1, tokens=self.tokens, logic_n=self.logic_n)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    symmetry: SymmetryConfig = field(default_factory=SymmetryConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: dict[str, Any] = field(default_factory=lambda: {"name": "lm"})
    # dotted keys that the command line set: where two settings conflict, the later one wins
    from_cli: frozenset[str] = field(default_factory=frozenset, metadata={"internal": True})
    # the config file that set each dotted key (a key set by no file has its default): errors name it
    origins: dict[str, str] = field(default_factory=dict, metadata={"internal": True})


SECTIONS = [f.name for f in dataclasses.fields(Config) if not f.metadata.get("internal")]
# Where else a key lives, for the error of a key given in the wrong place: filled in by the components
# that own sub-tables (optim/ registers each optimizer's knobs), read only to word the message.
KEY_OWNERS: dict[str, dict[str, list[str]]] = {"optim": {}}
# Names people type for a key that has another name here: the error names the real one.
ALIASES = {
    "optim": {
        "learning_rate": "lr", "optimizer": "name", "lr_schedule": "schedule", "warmup": "warmup_steps",
        "clip": "grad_clip", "grad_norm_clip": "grad_clip", "max_grad_norm": "grad_clip",
    },
    "train": {
        "steps": "max_steps", "num_steps": "max_steps", "iters": "max_steps", "max_iters": "max_steps",
        "micro_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum", "accumulation": "grad_accum",
        "tokens": "max_tokens",
    },
    "model": {
        "layers": "n_layer", "num_layers": "n_layer", "n_layers": "n_layer", "heads": "n_head", "n_heads": "n_head",
        "num_heads": "n_head", "d_model": "n_embd", "hidden_size": "n_embd", "context_length": "block_size",
        "seq_len": "block_size", "n_ctx": "block_size", "max_seq_len": "block_size",
    },
    "run": {"output_dir": "dir", "out_dir": "dir", "run_name": "name"},
    "symmetry": {"type": "mode", "breaking": "mode"},
}
# Keys that say the same thing two ways: the one given later (a child config over its parent, the command
# line over a file) replaces the other; both given at the same level is an error that names them.
EXCLUSIVE = {"train": [("max_steps", "max_tokens")]}


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.0)
    return match[0] if match else options[0]


def coerce(value: Any, kind: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field type; ints widen to floats, nothing else."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            try:
                return coerce(value, option, where)
            except UserError:
                pass
        raise UserError(f"{where}: expected {kind}, got {value!r}; fix the value")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list like [1,2], got {value!r}; write --{where}=[...]")
        (item,) = typing.get_args(kind)
        return [coerce(v, item, where) for v in value]
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise UserError(f"{where}: expected true or false, got {value!r}; fix the value")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}; fix the value")
    if not isinstance(value, kind):
        raise UserError(f"{where}: expected {kind.__name__}, got {value!r}; fix the value")
    return value


def unknown_key(section: str, key: str, names: list[str], preferred: Any = None) -> UserError:
    owners = KEY_OWNERS.get(section, {}).get(key)
    if owners:
        owner = preferred if preferred in owners else owners[0]
        tables = " and ".join(f"[{section}.{o}]" for o in owners) if len(owners) <= 2 else f"[{section}.<name>]"
        return UserError(
            f"'{section}.{key}' belongs in {tables}, not in [{section}]; write --{section}.{owner}.{key}=..."
        )
    alias = ALIASES.get(section, {}).get(key)
    return UserError(
        f"unknown config key '{section}.{key}'; did you mean '{section}.{alias or _closest(key, names)}'?"
    )


def key_name(field_name: str) -> str:
    """A field's key in a config: a Python keyword spelled with a trailing underscore in code
    (``lambda_``) is written without it (``task.lambda``)."""
    stem = field_name[:-1]
    return stem if field_name.endswith("_") and keyword.iskeyword(stem) else field_name


def build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    """Construct dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types, then run its
    ``check()`` (value ranges), if it has one."""
    hints = typing.get_type_hints(cls)
    fields = {key_name(f.name): f for f in dataclasses.fields(cls)}
    tables = next((k for k, f in fields.items() if f.metadata.get("tables")), None)
    names = [n for n in fields if n != tables]
    obj = cls()
    for key, value in values.items():
        if tables and isinstance(value, dict):
            getattr(obj, tables)[key] = dict(value)
            continue
        if key not in names:
            raise unknown_key(section, key, names, plain(values.get("name")))
        attr = fields[key].name
        if isinstance(value, Override):
            value = value.for_type(hints[attr])
        setattr(obj, attr, coerce(value, hints[attr], f"{section}.{key}"))
    if hasattr(obj, "check"):
        obj.check()
    check_kinds(obj, hints, section)
    return obj


def check_kinds(obj: Any, hints: dict[str, Any], section: str) -> None:
    """What holds for every key of its type, after the section's own ``check()`` had its say: a float is
    finite (no setting means nan or inf), and a key named ``*seed`` seeds generators that take
    [0, MAX_SEED] (numpy's legacy seeding, torch's, Python's, and the seeds derived from them)."""
    for f in dataclasses.fields(obj):
        key, value, kind = key_name(f.name), getattr(obj, f.name), hints[f.name]
        if kind is float or typing.get_args(kind) == (float,):
            for v in value if isinstance(value, list) else [value]:
                finite(section, **{key: v})
        if kind is int and key.endswith("seed"):
            require(0 <= value <= MAX_SEED, f"{section}.{key} must be in [0, {MAX_SEED}], got {value}")


@dataclass(frozen=True)
class Override:
    """A command-line value: its TOML reading, and its text for string keys (``--run.name=nan``)."""

    text: str
    value: Any

    def for_type(self, kind: Any) -> Any:
        return self.text if kind is str and not isinstance(self.value, str) else self.value


def plain(value: Any) -> Any:
    """A value with its command-line wrapper removed (tables recursively)."""
    if isinstance(value, Override):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def parse_value(text: str) -> Any:
    """A CLI value is read as a TOML value (numbers, booleans, lists, quoted strings); else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``--a.b=1 --a.c.d=2`` -> {"a": {"b": Override, "c": {"d": Override}}}."""
    out: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg or "." not in arg.split("=", 1)[0]:
            raise UserError(f"cannot read argument '{arg}'; write overrides as --section.key=value")
        key, text = arg[2:].split("=", 1)
        *path, name = key.split(".")
        table = out
        for part in path:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise UserError(f"'{arg}' sets a key inside '{part}', which is a value; fix the argument")
        table[name] = Override(text, parse_value(text))
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, tables merged key by key at every depth; of two keys that say the same
    thing (``EXCLUSIVE``), the one ``extra`` gives replaces the one ``base`` gave."""
    base = dict(base)
    for section, groups in EXCLUSIVE.items():
        later, earlier = extra.get(section), base.get(section)
        if not isinstance(later, dict) or not isinstance(earlier, dict):
            continue
        for group in groups:
            if any(k in later for k in group):
                base[section] = {k: v for k, v in earlier.items() if k not in group or k in later}
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def check_exclusive(layer: dict[str, Any], where: str) -> None:
    """One file, or the command line, may not set two keys of an ``EXCLUSIVE`` group (0 means unset)."""
    for section, groups in EXCLUSIVE.items():
        table = layer.get(section)
        if not isinstance(table, dict):
            continue
        for group in groups:
            given = [k for k in group if k in table and plain(table[k]) not in (0, None)]
            if len(given) > 1:
                keys = " and ".join(f"{section}.{k}" for k in given)
                raise UserError(f"{where} sets both {keys}, which say the same thing; keep only one of them")


def read_toml(path: str | Path, _seen: tuple[Path, ...] = (), origins: dict[str, str] | None = None) -> dict[str, Any]:
    """The file's settings over those of the files it inherits; ``origins`` collects which file set each key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass an existing .toml file (see configs/)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file '{path}' is not valid TOML ({e}); fix the syntax") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8 text: a binary file, or another encoding
        msg = f"config file '{path}' is not UTF-8 text (byte {e.start}); pass a .toml file, saved as UTF-8"
        raise UserError(msg) from None
    except OSError as e:
        raise UserError(f"cannot read config file '{path}' ({e.strerror}); check its permissions") from None
    check_exclusive(data, f"'{path}'")
    inherit = data.pop("inherit", None)  # a config may build on another, relative to itself
    if inherit is not None:
        if not isinstance(inherit, str) or not inherit:
            raise UserError(f"'{path}': inherit must be the path of another config file, got {inherit!r}")
        parent = (path.parent / inherit).resolve()
        if parent in _seen or parent == path.resolve():
            raise UserError(f"'{path}' inherits '{inherit}', which inherits it back; break the cycle")
        inherited = read_toml(parent, (*_seen, path.resolve()), origins)
    if origins is not None:
        origins.update(dict.fromkeys(flat_values(data), str(path)))
    return merge(inherited, data) if inherit is not None else data


def flat_values(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as one level of dotted keys: {"optim": {"adamw": {"lr": 1}}} -> {"optim.adamw.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flat_values(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def cli_keys(data: dict[str, Any]) -> set[str]:
    """The dotted keys that the command line set (their values are ``Override``)."""
    return {key for key, value in flat_values(data).items() if isinstance(value, Override)}


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    for section, values in data.items():
        if section not in SECTIONS:
            raise UserError(f"unknown config section '{section}'; did you mean '{_closest(section, SECTIONS)}'?")
        if not isinstance(values, dict):
            raise UserError(f"config section '{section}' must be a table of key = value pairs")
        if section == "task":  # free-form: its task validates it, so only the TOML reading is kept
            cfg.task = {"name": "lm", **plain(values)}
            continue
        cls = type(getattr(cfg, section))
        setattr(cfg, section, build_section(cls, values, section))
    cfg.from_cli = frozenset(cli_keys(data))
    return cfg


def check_optimizer_overrides(cfg: Config) -> None:
    """An override of an optimizer that will not run would be silently ignored: refuse it."""
    for key in sorted(cfg.from_cli):
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "optim" and parts[1] != cfg.optim.name:
            raise UserError(
                f"--{key} sets a knob of optimizer '{parts[1]}', but optim.name is '{cfg.optim.name}'; "
                f"drop it or add --optim.name={parts[1]}"
            )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    origins: dict[str, str] = {}
    data = read_toml(path or DEFAULT_CONFIG, origins=origins)
    cli = parse_overrides(overrides or [])
    check_exclusive(cli, "the command line")
    cfg = from_dict(merge(data, cli))
    cfg.origins = origins
    check_optimizer_overrides(cfg)
    return cfg


def origin(cfg: Config, key: str) -> str:
    """Where the dotted ``key`` got its value, for a message that tells the user what to change."""
    if key in cfg.from_cli:
        return "on the command line"
    if key in cfg.origins:
        default = " (the default config)" if Path(cfg.origins[key]) == DEFAULT_CONFIG else ""
        return f"in '{cfg.origins[key]}'{default}"
    return "by default"


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain TOML-shaped data: optimizer tables nested under ``optim``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("internal"):
            continue
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value):
            out[f.name] = plain(value)
            continue
        section: dict[str, Any] = {}
        for g in dataclasses.fields(value):
            v = getattr(value, g.name)
            if g.metadata.get("tables"):
                section.update({name: plain(table) for name, table in v.items()})
            else:
                section[g.name] = list(v) if isinstance(v, list) else v
        out[f.name] = section
    return out


def _toml_string(s: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}
    out = []
    for ch in s:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    bare = k and all(ch.isalnum() or ch in "_-" for ch in k) and k.isascii()
    return k if bare else _toml_string(k)


def to_toml(data: dict[str, Any]) -> str:
    """Write nested tables of plain values as TOML; ``tomllib`` reads back exactly ``data``."""
    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        subtables = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items() if k not in subtables)
        lines.append("")
        for k, v in subtables.items():
            table(f"{name}.{_toml_key(k)}", v)

    for name, values in data.items():
        table(_toml_key(name), values)
    return "\n".join(lines)
