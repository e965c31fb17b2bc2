"""Checkpoints of a run dir: atomic writes with an integrity record, retention, verified loads, resume rules.

A checkpoint ``ckpt_<step>.pt`` holds plain data only (tensors, numbers, strings, lists, dicts), so it
loads with ``torch.load(weights_only=True)``; its sidecar ``ckpt_<step>.json`` records the sha256,
the step and the validation loss at that step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from configs import Config, UserError, flat_values, to_dict, what_is

CKPT_GLOB = "ckpt_*.pt"
SUPERSEDED = ".superseded"  # suffix of checkpoints set aside because a resume went back before them


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"ckpt_{step:08d}.pt"


def sidecar(path: Path) -> Path:
    """The checkpoint's integrity record: ``{"step", "sha256", "val_loss"}``."""
    return path.with_suffix(".json")


def checkpoint_step(path: Path) -> int:
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run dir's checkpoints, oldest first."""
    return sorted((p for p in run_dir.glob(CKPT_GLOB) if checkpoint_step(p) >= 0), key=checkpoint_step)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry, not just the file, must reach the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not every platform opens directories
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every global random stream of this process, as plain data (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached),
        },
        "python": {"version": version, "state": list(mt), "gauss": gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Write so that a kill at any moment leaves the earlier checkpoints intact and usable.

    The payload goes to a temporary file (fsynced), its sha256 into the sidecar, and only then does
    the rename make the checkpoint visible: a visible checkpoint always has its record, and a record
    without its checkpoint is ignored. Then prune: the newest ``keep`` and the best stay.
    """
    path = checkpoint_path(run_dir, step)
    tmp = path.with_name(path.name + ".tmp")
    side = sidecar(path)
    side_tmp = side.with_name(side.name + ".tmp")
    try:
        torch.save(payload, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        meta = {"step": step, "sha256": sha256_file(tmp), "val_loss": payload.get("val_loss")}
        side_tmp.write_text(json.dumps(meta) + "\n")
        os.replace(side_tmp, side)
        os.replace(tmp, path)
        fsync_dir(run_dir)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write (a full disk) as a RuntimeError
        for partial in (tmp, side_tmp):  # it would only hold on to the space that is missing
            partial.unlink(missing_ok=True)
        raise UserError(
            f"cannot write checkpoint '{path}' ({write_failure(e, run_dir)}); {kept_checkpoint(run_dir)}; "
            "free disk space or fix permissions, then continue with --run.resume=true"
        ) from None
    prune_checkpoints(run_dir, keep)
    return path


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a failed write (a full disk) leaves the old file as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a partial copy would only take up space
        raise


def write_failure(e: Exception, folder: Path) -> str:
    """Why a write into ``folder`` failed, in words: the system's reason, or the free space left."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return f"the write failed with {free}"


def kept_checkpoint(run_dir: Path) -> str:
    """What a run that stops on an error leaves to continue from, for its error line."""
    good = list_checkpoints(run_dir)
    if not good:
        return "no checkpoint was written yet"
    return f"the last good checkpoint {good[-1]} (step {checkpoint_step(good[-1])}) is kept"


def checkpoint_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def best_checkpoint(ckpts: list[Path]) -> Path | None:
    """The checkpoint with the lowest recorded validation loss (recorded only where it was measured)."""
    scored = [(checkpoint_meta(p).get("val_loss"), p) for p in ckpts]
    scored = [(v, p) for v, p in scored if isinstance(v, (int, float)) and math.isfinite(v)]
    return min(scored, key=lambda vp: vp[0])[1] if scored else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints and the best one; ``keep <= 0`` keeps everything."""
    ckpts = list_checkpoints(run_dir)
    if keep <= 0 or len(ckpts) <= keep:
        return
    best = best_checkpoint(ckpts)
    for p in ckpts[:-keep]:
        if p != best:
            p.unlink(missing_ok=True)
            sidecar(p).unlink(missing_ok=True)


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Parameter names as the bare model has them: torch.compile adds ``_orig_mod.``, DDP ``module.``."""
    out = {}
    for key, value in state.items():
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def load_checkpoint(path: Path, verify: bool = True, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load one checkpoint, checked against its recorded sha256; a UserError names a damaged file.

    One without a readable record loads unverified, and ``warn`` (default: a line on stderr) says so.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' {what_is(path)}; pass a ckpt_*.pt file")
    if path.suffix == ".json":
        raise UserError(
            f"'{path}' is a checkpoint's integrity record, not the checkpoint; pass {path.with_suffix('.pt')}"
        )
    meta = checkpoint_meta(path) if verify else {}
    if verify and not meta.get("sha256"):
        # Loaded all the same (a checkpoint copied without its record is still the weights), but never
        # without a word: the user learns that nothing vouches for the file.
        why = "is missing" if not sidecar(path).exists() else "is unreadable"
        note = f"warning: {sidecar(path).name}, the sha256 record of '{path}', {why}; loading it unverified"
        if warn is not None:
            warn(note)
        else:
            print(note, file=sys.stderr)
    elif verify and sha256_file(path) != meta["sha256"]:
        raise UserError(f"checkpoint '{path}' does not match the sha256 in {sidecar(path).name} (corrupt or truncated)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle: all mean the same to the user
        raise UserError(f"checkpoint '{path}' cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"'{path}' is not a checkpoint written by train.py (no model state in it)")
    state["model"] = strip_wrapper_prefixes(state["model"])
    return state


def latest_good_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads and verifies, or None when there is none; damaged ones are reported."""
    ckpts = list_checkpoints(run_dir)
    for path in reversed(ckpts):
        try:
            return path, load_checkpoint(path, warn=warn)
        except UserError as e:
            warn(f"warning: {e}; falling back to an earlier checkpoint")
    if ckpts:
        raise UserError(
            f"every checkpoint in '{run_dir}' is damaged ({len(ckpts)} tried); "
            "resume from a copy with --run.checkpoint=PATH or start again with --run.overwrite=true"
        )
    return None


def set_aside_newer(run_dir: Path, step: int, warn: Callable[[str], None]) -> None:
    """Rename checkpoints past ``step`` to ``*.superseded``: a resume from ``step`` replaces their
    timeline, and left in place they would be taken for the newest state. Nothing is deleted."""
    newer = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) > step]
    for p in newer:
        for f in (p, sidecar(p)):
            if f.exists():
                os.replace(f, f.with_name(f.name + SUPERSEDED))
    if newer:
        warn(
            f"warning: {len(newer)} checkpoint(s) past step {step} in '{run_dir}' renamed to *{SUPERSEDED} "
            "(the resumed run replaces them); delete them when no longer needed"
        )


def remove_partial_writes(run_dir: Path) -> None:
    """Temporary files left by a kill mid-write: never complete, never needed."""
    for p in run_dir.glob("*.tmp"):
        p.unlink(missing_ok=True)


# Config keys that may differ between a run and its resumed continuation.
RESUME_MAY_CHANGE = {
    "run": {
        "name",
        "dir",
        "resume",
        "checkpoint",
        "init_from",
        "overwrite",
        "device",
        "compile",
        "wandb",
        "wandb_project",
        "dtype",
        "threads",
    },
    "train": {
        "max_steps",
        "max_tokens",
        "log_interval",
        "checkpoint_interval",
        "keep_checkpoints",
        "peak_flops",
        "progress",
        "grad_accum",
        "on_nonfinite",
        "max_skips",
        "sync_interval",
    },
    "eval": "*",
}


flat = flat_values  # nested tables as one level of dotted keys (kept by this name for the run-dir tools)


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``section.key: old -> new`` for every key that must not change across a resume.

    A key the checkpoint lacks (added to the config since) counts as unchanged while it keeps its default.
    """
    defaults = to_dict(Config())
    diffs = []
    for section, values in new.items():
        free = RESUME_MAY_CHANGE.get(section, set())
        if free == "*":
            continue
        before, after, default = flat(old.get(section, {})), flat(values), flat(defaults.get(section, {}))
        for key in sorted(set(after) | set(before)):
            if key in free:
                continue
            if key not in before and after.get(key) == default.get(key):
                continue
            if before.get(key) != after.get(key):
                diffs.append(f"{section}.{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return diffs


RESUME_KEYS = ("optimizer", "step", "tokens", "wall_s", "config", "world_size", "rng", "best_val", "skips")


def check_resumable(state: dict[str, Any], cfg: Config, world_size: int, path: Path) -> None:
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise UserError(
            f"'{path}' holds model weights but no training state ({', '.join(missing)} missing); "
            "it cannot be resumed, only evaluated"
        )
    diffs = config_differences(state["config"], to_dict(cfg))
    if diffs:
        raise UserError(
            f"cannot resume from '{path}': the config differs in {'; '.join(diffs)}; "
            "pass the checkpoint's values or start a new run with another --run.name"
        )
    old_accum = state["config"]["train"]["grad_accum"]
    product = old_accum * state["world_size"]  # micro-batches per step: the resumed run must keep it
    if product != cfg.train.grad_accum * world_size:
        if product % world_size == 0:
            fix = f"pass --train.grad_accum={product // world_size}"
        else:  # no grad_accum fits this many processes: name the process counts nearest to it that do
            counts = sorted((n for n in range(1, product + 1) if product % n == 0), key=lambda n: abs(n - world_size))
            fix = "resume with " + " or ".join(
                f"{n} process{'es' if n > 1 else ''} and --train.grad_accum={product // n}" for n in sorted(counts[:3])
            )
        raise UserError(
            f"cannot resume from '{path}': it ran grad_accum x processes = {old_accum}x{state['world_size']}, "
            f"this run {cfg.train.grad_accum}x{world_size}; the product must stay {product}: {fix}"
        )
