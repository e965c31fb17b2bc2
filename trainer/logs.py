"""Where a run's numbers go: ``metrics.jsonl`` in the run dir, and optionally Weights & Biases."""

from __future__ import annotations

import json
import secrets
import shutil
import string
from pathlib import Path
from typing import Any

from checkpoints import replace_file
from configs import Config, UserError, to_dict
from runtime import Context


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a line cut short by a kill mid-write is dropped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def resume_history(path: Path, resume_step: int, source: Path | None = None) -> list[dict]:
    """The records a run resumed at ``resume_step`` keeps: its ``metrics.jsonl`` (or ``source``'s, when the
    run dir has none: a run branched from another run's checkpoint) up to that step.

    The resume rewrites the file from these records, so a file that cannot be read whole is refused, not
    replaced; only its last line may be cut short (a kill mid-write), and that line is dropped.
    """
    src = path if path.exists() else source
    if src is None or not src.exists():
        return []
    why = ""
    try:
        lines = src.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        lines, why = [], getattr(e, "strerror", None) or "not UTF-8 text"
    records = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
        elif rec is not None or i < len(lines) - 1:
            why = f"line {i + 1} is not a record with a step"
            break
    if why:
        raise UserError(
            f"cannot resume: '{src}' is unreadable ({why}) and a resume rewrites it, so it is left as it is; "
            f"restore it from a copy, or move it aside and resume again (the log then restarts at step {resume_step})"
        )
    return [r for r in records if r["step"] <= resume_step]


class MetricsLog:
    """metrics.jsonl on rank 0. A resumed run first keeps only the lines up to its checkpoint's step
    (``resume_history``), so that the run and its continuation share one file with each step logged once."""

    def __init__(
        self,
        path: Path,
        resume_step: int | None,
        enabled: bool,
        source: Path | None = None,
        history: list[dict] | None = None,
    ):
        """``history``: the resume's records when the caller read them already (``resume_history``)."""
        self.path, self.enabled = path, enabled
        self.history: list[dict] = []
        if not enabled:
            return
        if resume_step is not None:
            self.history = resume_history(path, resume_step, source) if history is None else list(history)
            replace_file(path, "".join(json.dumps(r) + "\n" for r in self.history))
        elif path.exists():
            path.unlink()
        self.file = open(path, "a", buffering=1)  # a line at a time: a kill loses at most the line in flight

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.history.append(record)
        try:
            self.file.write(json.dumps(record) + "\n")
        except OSError as e:  # a write names no file: the error line should
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def close(self) -> None:
        if self.enabled and not self.file.closed:
            try:
                self.file.close()
            except OSError:  # line-buffered: only a line whose write already failed (and stopped the run) is lost
                pass


def wandb_module(cfg: Config) -> Any:
    """The wandb module when ``run.wandb`` asks for it (None when disabled); checked before a run starts."""
    if cfg.run.wandb == "disabled":
        return None
    try:
        import wandb  # an optional dependency: the [wandb] extra, imported only when asked for
    except ImportError:
        raise UserError(
            "run.wandb is set but wandb is not installed; pip install wandb or set --run.wandb=disabled"
        ) from None
    return wandb


def new_run_id() -> str:
    """A fresh wandb run id, 8 characters of [a-z0-9] like wandb's own (whose helper moved between releases)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandbLogger:
    """One wandb run per run dir: its id is kept in ``wandb_id.txt``, so a resumed run continues it.

    Starting wandb is the last check before a run writes its files: a start that fails leaves the run dir
    as it was (what wandb wrote into it is removed) and ends with one line.
    """

    ID_FILE = "wandb_id.txt"

    def __init__(self, cfg: Config, ctx: Context):
        self.cfg, self.ctx = cfg, ctx
        self.run: Any = None
        self.run_id = ""

    def start(self, wandb: Any, continuing: bool) -> None:
        """Begin (or, ``continuing`` a run of this run dir, resume) the wandb run; rank 0 only."""
        if wandb is None or not self.ctx.is_main:
            return
        run_dir = self.ctx.run_dir
        id_file = run_dir / self.ID_FILE
        self.run_id = id_file.read_text().strip() if continuing and id_file.exists() else new_run_id()
        made_dir = not (run_dir / "wandb").exists()
        try:
            self.run = wandb.init(
                project=self.cfg.run.wandb_project,
                name=self.cfg.run.name,
                id=self.run_id,
                mode=self.cfg.run.wandb,
                config=to_dict(self.cfg),
                dir=str(run_dir),
                resume="allow",
            )
        except Exception as e:  # wandb's own errors (login, network, settings) differ between its releases
            if made_dir:
                shutil.rmtree(run_dir / "wandb", ignore_errors=True)
            detail = " ".join(str(e).split())[:200]
            raise UserError(
                f"wandb did not start ({type(e).__name__}: {detail}); fix that, or log offline with "
                "--run.wandb=offline (no account needed), or not at all with --run.wandb=disabled"
            ) from None

    def keep_id(self) -> None:
        """Once the run dir is this run's: the id a resume continues."""
        if self.run is not None:
            (self.ctx.run_dir / self.ID_FILE).write_text(self.run_id + "\n")

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class Loggers:
    """Every record goes to both: metrics.jsonl (the run's own history) and wandb."""

    def __init__(self, metrics: MetricsLog, wandb: WandbLogger):
        self.metrics, self.wandb = metrics, wandb

    @property
    def history(self) -> list[dict]:
        return self.metrics.history

    def log(self, record: dict) -> None:
        self.metrics.log(record)
        self.wandb.log(record)

    def close(self) -> None:
        self.metrics.close()
        self.wandb.finish()
