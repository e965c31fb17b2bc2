"""A run dir read by the evaluation tools stays as it was; they evaluate on the data the run recorded
(checked by its fingerprint) or, when told, on other data. Weights of one run seed another, and an
imported model goes import -> fine-tune -> export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

import train
from data.shards import write_shard
from eval import alignment, hf, val
from trainer import read_jsonl

from helpers import args, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert train.main(args(data_dir, root, "r", steps=4)) == 0
    return root / "r"


def test_evaluation_reads_the_recorded_data_and_writes_nothing(run_dir, capsys, tmp_path, monkeypatch):
    record = json.loads((run_dir / "data.json").read_text())
    assert Path(record["folder"]).is_absolute() and len(record["fingerprint"]) == 64
    before = snapshot(run_dir)
    (tmp_path / "data" / "prepared").mkdir(parents=True)  # a different working directory, other datasets
    monkeypatch.chdir(tmp_path)
    assert val.main([str(run_dir), "--tokens", "2048", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    logged = [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r][-1]
    assert out["val_loss"] == pytest.approx(logged, abs=1e-6)  # the trainer's own number, from elsewhere
    assert snapshot(run_dir) == before


def test_changed_or_missing_data_is_refused_and_other_data_is_an_explicit_choice(run_dir, data_dir, tmp_path, capsys):
    moved = tmp_path / "copy"
    shutil.copytree(data_dir, moved)
    copied = json.loads((run_dir / "data.json").read_text())
    other = tmp_path / "other"  # the same format, other tokens
    other.mkdir()
    write_shard(other / "o_train_000000.bin", torch.randint(0, 257, (5000,)).numpy(), 257)
    write_shard(other / "o_val_000000.bin", torch.randint(0, 257, (3000,)).numpy(), 257)
    (other / "meta.json").write_text(json.dumps({"tokenizer": "byte", "vocab_size": 257, "eot": 256}))
    fake = dict(copied, folder=str(other))
    record = run_dir / "data.json"
    try:
        record.write_text(json.dumps(fake))
        assert val.main([str(run_dir), "--tokens", "1024", "--device", "cpu"]) == 2
        assert "no longer holds the data this run trained on" in one_line_error(capsys.readouterr().err)
        record.write_text(json.dumps(dict(copied, folder=str(tmp_path / "gone"))))
        assert val.main([str(run_dir), "--tokens", "1024", "--device", "cpu"]) == 2
        assert "is gone; pass --data PATH" in one_line_error(capsys.readouterr().err)
        assert val.main([str(run_dir), "--tokens", "1024", "--device", "cpu", "--data", str(other)]) == 0
        assert f"of {other}" in capsys.readouterr().out
        # the alignment analysis counts training-token frequencies in the same data, or says why it cannot
        out = tmp_path / "align"
        assert alignment.main([str(run_dir), "--out", str(out), "--positions", "2", "--device", "cpu"]) == 0
        assert "is gone" in json.loads((out / "alignment.json").read_text())["note"]
        assert alignment.main([str(run_dir), "--out", str(out), "--positions", "2", "--device", "cpu",
                               "--data", str(other)]) == 0
        assert "note" not in json.loads((out / "alignment.json").read_text())
    finally:
        record.write_text(json.dumps(copied))


def test_weights_seed_a_new_run_with_a_fresh_optimizer(run_dir, data_dir, tmp_path, capsys):
    """--run.init_from: step 0 of the new run evaluates exactly the old run's final weights."""
    assert train.main(args(data_dir, tmp_path, "next", f"--run.init_from={run_dir}", steps=2)) == 0
    assert f"starting from the weights of {run_dir}" in capsys.readouterr().out
    old = [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r][-1]
    new = read_jsonl(tmp_path / "next" / "metrics.jsonl")[0]
    assert new["step"] == 0 and new["val_loss"] == pytest.approx(old, abs=1e-6)
    assert train.main(args(data_dir, tmp_path, "bad", f"--run.init_from={run_dir}", "--model.n_embd=64")) == 2
    assert "another architecture" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()


def test_import_finetune_export(data_dir, tmp_path):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=257, n_positions=32, n_layer=1, n_head=2, n_embd=32, eos_token_id=256)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    assert hf.main(["import", str(tmp_path / "gpt2"), str(tmp_path / "runs" / "imported"), "--tokenizer", "byte"]) == 0
    tune = args(data_dir, tmp_path / "runs", "tuned", f"--run.init_from={tmp_path / 'runs' / 'imported'}", steps=3)
    tune += ["--model.mlp=gelu", "--symmetry.mode=symmetric"]
    assert train.main(tune) == 0
    assert hf.main(["export", str(tmp_path / "runs" / "tuned"), str(tmp_path / "export")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    tok = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"  # the name transformers 4.x and 5.x both read
    )
    ids = tok("The cat", return_tensors="pt").input_ids
    assert ids.tolist() == [list(b"The cat")] and model(ids).logits.shape[-1] == 257
