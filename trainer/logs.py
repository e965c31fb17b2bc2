"""Where a run's numbers go: ``metrics.jsonl`` in the run dir, and optionally Weights & Biases."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


class MetricsLog:
    """metrics.jsonl on rank 0. A resumed run first keeps only the lines up to its checkpoint's step
    (from ``source`` when this run dir has none yet: a run branched from another run's checkpoint),
    so that the run and its continuation share one file with each step logged once."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool, source: Path | None = None):
        self.path, self.enabled = path, enabled
        self.history: list[dict] = []
        if not enabled:
            return
        if resume_step is not None:
            src = path if path.exists() else source
            if src is not None and src.exists():
                self.history = [r for r in read_jsonl(src) if r.get("step", 0) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
            os.replace(tmp, path)
        elif path.exists():
            path.unlink()
        self.file = open(path, "a", buffering=1)  # a line at a time: a kill loses at most the line in flight

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.history.append(record)
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.enabled and not self.file.closed:
            self.file.close()


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


class WandbLogger:
    """One wandb run per run dir: its id is kept in ``wandb_id.txt``, so a resumed run continues it."""

    ID_FILE = "wandb_id.txt"

    def __init__(self, cfg: Config, ctx: Context, wandb: Any):
        self.run = None
        if wandb is None or not ctx.is_main:
            return
        id_file = ctx.run_dir / self.ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=cfg.run.wandb_project,
            name=cfg.run.name,
            id=run_id,
            mode=cfg.run.wandb,
            config=to_dict(cfg),
            dir=str(ctx.run_dir),
            resume="allow",
        )

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


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
