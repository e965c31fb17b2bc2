"""Language-model pretraining as a Task: next-token prediction on token shards with the GPT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from configs import Config, UserError, origin
from data.dataset import DATA_RECORD, TOKENIZER_DIR, open_dataset
from eval.logic import run_suite
from eval.sample import sample_text
from eval.val import validation_loss
from model import GPT, BiasDraws
from model.symmetry import DRAWS
from runtime import Context, to_device
from tasks.base import Task


class LMTask(Task):
    """Next-token prediction on token shards with the symmetry-broken GPT."""

    def __init__(self, cfg: Config, ctx: Context):
        super().__init__(cfg, ctx)
        if set(cfg.task) - {"name"}:
            extra = sorted(set(cfg.task) - {"name"})[0]
            raise UserError(f"unknown config key 'task.{extra}' for the lm task; remove it")
        self.data = open_dataset(cfg.data, ctx, origin(cfg, "data.tokenizer"))
        self.tokenizer = self.data.tokenizer
        m = cfg.model
        self.block_size = m.block_size
        self.train = self.data.stream("train", cfg.train.batch_size, m.block_size, cfg.run.seed)
        eval_bs = cfg.eval.batch_size or cfg.train.batch_size
        self.val = self.data.stream("val", eval_bs, m.block_size, cfg.run.seed, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        return {"bias_draws": DRAWS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.model.bias_spec.draws_anything and state.get("bias_draws") != DRAWS:
            raise UserError(
                "the checkpoint was written by an earlier version that drew the attention biases another way, "
                "so a resume could not replay its draws; start a new run from its weights with --run.init_from=PATH"
            )

    def write_run_files(self, run_dir: Path) -> None:
        self.data.save_tokenizer(run_dir / TOKENIZER_DIR)
        (run_dir / DATA_RECORD).write_text(json.dumps(self.data.record(), indent=2) + "\n")

    def build_model(self) -> nn.Module:
        self.model = GPT.from_config(self.cfg, self.tokenizer.vocab_size)
        # this rank reads micro-batches rank, rank + world_size, ...: their biases are drawn ahead on the device
        self.biases = BiasDraws(self.model.bias_spec, self.cfg.run.seed, self.ctx.device, stride=self.ctx.world_size)
        return self.model

    def batch(self, micro_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.train.batch(micro_index)
        return to_device(x, self.ctx.device), to_device(y, self.ctx.device)

    def loss(self, model: nn.Module, batch: Any, micro_index: int) -> torch.Tensor:
        x, y = batch
        return model(x, y, self.biases(micro_index))[1]

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.cfg.train.batch_size * self.block_size

    def flops_per_token(self, model: nn.Module) -> float | None:
        return self.model.flops_per_token()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss over the first ``eval.tokens`` of the validation split, shared across ranks."""
        out = {"val_loss": validation_loss(model, self.val, self.cfg.eval.tokens, self.ctx)}
        if self.cfg.eval.logic:
            out.update(run_suite(model, self.tokenizer, n=self.cfg.eval.logic_n, device=self.ctx.device))
        return out

    def finish(self, model: nn.Module, history: list[dict]) -> dict[str, Any]:
        e = self.cfg.eval
        if not e.sample_tokens:
            return {}
        text = sample_text(
            model, self.tokenizer, e.sample_prompt, e.sample_tokens, e.sample_temperature, e.sample_top_k or None,
            seed=self.cfg.run.seed, device=self.ctx.device,
        )
        return {"sample": text}
