"""Typed run configuration: TOML files plus ``--section.key=value`` overrides.

Every section is a dataclass; loading validates names and types so that a typo is a one-line
error naming the closest valid key, never a silently ignored setting. The ``task`` section is
free-form here and validated by the task that owns it (see ``tasks.py`` in the trainer).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
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


@dataclass
class RunConfig:
    name: str = "quickstart"
    dir: str = "runs"  # run dirs live at <dir>/<name>
    seed: int = 1337
    resume: bool = False  # continue from the latest good checkpoint in the run dir
    checkpoint: str = ""  # resume from this checkpoint file instead of the latest
    overwrite: bool = False  # allow starting a fresh run in a non-empty run dir
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | float32 | bfloat16
    compile: bool = False
    wandb: str = "disabled"  # disabled | offline | online
    wandb_project: str = "symbreak"
    threads: int = 0  # CPU intra-op threads (torch.set_num_threads); 0 keeps torch's default


@dataclass
class ModelConfig:
    preset: str = ""  # a name from model.PRESETS fills n_layer/n_head/n_embd
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    vocab_size: int = 0  # 0: taken from the data's tokenizer
    mlp: str = "prelu"  # prelu | gelu
    prelu_mean: float = 0.2
    prelu_std: float = 1.0
    bias: bool = True
    dropout: float = 0.0


@dataclass
class SymmetryConfig:
    mode: str = "bqbv"  # symmetric | bq | bqbv
    q_mean: float = 0.5
    q_std_min: float = 0.05  # bQ's std is spaced linearly from q_std_min to q_std_max over head_dim
    q_std_max: float = 0.15
    v_mean: float = 0.5
    v_std: float = 0.05
    k_bias: bool = False  # softmax cancels a key bias; kept to demonstrate that
    k_mean: float = 0.5
    k_std: float = 0.05
    per_head: bool = False  # one draw per head instead of one per layer shared by its heads


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgdm | soap | ecd | ...
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    momentum: float = 0.95
    nesterov: bool = True
    grad_clip: float = 1.0  # 0 disables clipping
    decay_embeddings: bool = False  # apply weight decay to embedding matrices too
    schedule: str = "cosine"  # cosine | constant | linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine/linear decay ends at lr * min_lr_ratio
    # SOAP
    precondition_frequency: int = 10
    max_precond_dim: int = 10000
    shampoo_beta: float = -1.0  # <0: use betas[1]
    spread_refresh: bool = True  # DDP: each rank refreshes a share of the eigenbases and broadcasts them
    # ECD
    eta: float = 100.0
    f0: float = 2.0
    nu: float = 0.0
    per_tensor: bool = False  # reproduce the reference code's per-tensor dot products
    on_low_loss: str = "error"  # what to do when F <= F0: error | skip | clamp
    low_loss_floor: float = 1e-3  # on_low_loss=clamp: F - F0 is raised to this
    noise_seed: int = 0  # seeds ECD's direction noise (nu > 0); the same on every rank


@dataclass
class DataConfig:
    name: str = "builtin"  # builtin | a prepared dataset folder name under data.root
    path: str = ""  # a folder of token shards (*train*.bin / *val*.bin); overrides name
    root: str = "data/prepared"  # where prepared datasets live
    tokenizer: str = "byte"  # used when the builtin corpus has to be prepared


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


@dataclass
class EvalConfig:
    interval: int = 100  # validate every N steps (and at the end); 0: only at the end
    tokens: int = 65536  # validation token budget
    batch_size: int = 0  # 0: the training micro-batch size
    sample_tokens: int = 200  # length of the sample printed at the end (0: none)
    sample_prompt: str = "The "
    logic: bool = False  # run the logic suite at each validation
    logic_n: int = 20


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


SECTIONS = [f.name for f in dataclasses.fields(Config)]


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


def build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    """Construct dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    obj = cls()
    for key, value in values.items():
        if key not in names:
            raise UserError(f"unknown config key '{section}.{key}'; did you mean '{section}.{_closest(key, names)}'?")
        if isinstance(value, Override):
            value = value.for_type(hints[key])
        setattr(obj, key, coerce(value, hints[key], f"{section}.{key}"))
    return obj


@dataclass(frozen=True)
class Override:
    """A command-line value: its TOML reading, and its text for string keys (``--run.name=nan``)."""

    text: str
    value: Any

    def for_type(self, kind: Any) -> Any:
        return self.text if kind is str and not isinstance(self.value, str) else self.value


def parse_value(text: str) -> Any:
    """A CLI value is read as a TOML value (numbers, booleans, lists, quoted strings); else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg or "." not in arg.split("=", 1)[0]:
            raise UserError(f"cannot read argument '{arg}'; write overrides as --section.key=value")
        key, text = arg[2:].split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = Override(text, parse_value(text))
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass an existing .toml file (see configs/)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file '{path}' is not valid TOML ({e}); fix the syntax") from None
    inherit = data.pop("inherit", None)  # a config may build on another, relative to itself
    if inherit:
        data = merge(read_toml(path.parent / inherit), data)
    return data


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    for section, values in data.items():
        if section not in SECTIONS:
            raise UserError(f"unknown config section '{section}'; did you mean '{_closest(section, SECTIONS)}'?")
        if not isinstance(values, dict):
            raise UserError(f"config section '{section}' must be a table of key = value pairs")
        if section == "task":  # free-form: its task validates it, so only the TOML reading is kept
            values = {k: v.value if isinstance(v, Override) else v for k, v in values.items()}
            cfg.task = {"name": "lm", **values}
            continue
        cls = type(getattr(cfg, section))
        setattr(cfg, section, build_section(cls, values, section))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    data = read_toml(path or DEFAULT_CONFIG)
    return from_dict(merge(data, parse_overrides(overrides or [])))


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_toml(data: dict[str, Any]) -> str:
    """Write a (two-level) config dict as TOML; the resolved config goes into every run dir."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
