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
TOKENIZERS = ("byte", "gpt2", "bpe")  # data.tokenizer (and what a dataset's meta.json may name)


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


class ArgumentParser(argparse.ArgumentParser):
    """The project's one flag style for its tools: ``--snake_case`` flags (as the config keys are
    written), each also accepted with hyphens (``--max-tokens``); a bad argument is a UserError, so the
    tool prints one line and exits 2 like every other user error."""

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        spelled = list(names)
        for name in names:
            if name.startswith("--") and "_" in name and name.replace("_", "-") not in spelled:
                spelled.append(name.replace("_", "-"))
        return super().add_argument(*spelled, **kwargs)

    def add_device(self) -> None:
        self.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N, mps")

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")


def resolve_device(name: str) -> str:
    """``auto`` is the first GPU when one is visible, else the CPU."""
    if name != "auto":
        return name
    import torch  # only tools that run a model ask for a device

    return "cuda" if torch.cuda.is_available() else "cpu"


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
        name = Path(self.name)
        ok = self.name.strip() != "" and not name.is_absolute() and ".." not in name.parts and name != Path(".")
        require(ok, f"run.name must name a folder inside run.dir, got {self.name!r}; pass --run.name=NAME")
        require(self.dir.strip() != "", "run.dir must not be empty; pass --run.dir=PATH (default runs)")
        device = self.device.split(":")[0]
        good_device = device in ("auto", "cpu", "cuda", "mps") and (device == self.device or self.device[5:].isdigit())
        require(good_device, f"unknown run.device '{self.device}'; use auto, cpu, cuda, cuda:N or mps")
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

    def check(self) -> None:
        one_of("model", "mlp", self.mlp, MLPS)
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

    def check(self) -> None:
        one_of("symmetry", "mode", self.mode, MODES)
        finite("symmetry", q_mean=self.q_mean, v_mean=self.v_mean, k_mean=self.k_mean)
        non_negative("symmetry", q_std_min=self.q_std_min, q_std_max=self.q_std_max, v_std=self.v_std, k_std=self.k_std)


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
    name: str = "builtin"  # builtin | a prepared dataset folder name under data.root
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
    logic: bool = False  # run the logic suite at each validation
    logic_n: int = 20

    def check(self) -> None:
        at_least("eval", 0, interval=self.interval, batch_size=self.batch_size, sample_tokens=self.sample_tokens)
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
    return obj


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


def read_toml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass an existing .toml file (see configs/)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file '{path}' is not valid TOML ({e}); fix the syntax") from None
    check_exclusive(data, f"'{path}'")
    inherit = data.pop("inherit", None)  # a config may build on another, relative to itself
    if inherit is not None:
        if not isinstance(inherit, str) or not inherit:
            raise UserError(f"'{path}': inherit must be the path of another config file, got {inherit!r}")
        parent = (path.parent / inherit).resolve()
        if parent in _seen or parent == path.resolve():
            raise UserError(f"'{path}' inherits '{inherit}', which inherits it back; break the cycle")
        data = merge(read_toml(parent, (*_seen, path.resolve())), data)
    return data


def cli_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        if isinstance(value, Override):
            out.add(prefix + key)
        elif isinstance(value, dict):
            out |= cli_keys(value, f"{prefix}{key}.")
    return out


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
    data = read_toml(path or DEFAULT_CONFIG)
    cli = parse_overrides(overrides or [])
    check_exclusive(cli, "the command line")
    cfg = from_dict(merge(data, cli))
    check_optimizer_overrides(cfg)
    return cfg


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
