"""The evaluation commands on one tiny run that also logged the logic suite during training."""

import json

import numpy as np
import pytest
import torch

import train
from eval import alignment, hf, logic, val
from eval.run import load_run

from helpers import BYTE_QUICKSTART, QUIET, TINY_GPT

TINY = [
    *TINY_GPT,
    *QUIET,
    "--model.block_size=64",  # room for the logic items
    "--train.batch_size=4",
    "--train.max_steps=3",
    "--eval.interval=0",
    "--eval.tokens=1024",
    "--eval.logic=true",
    "--eval.logic_n=3",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert train.main([BYTE_QUICKSTART, f"--run.dir={root}", "--run.name=tiny", *TINY]) == 0
    return root / "tiny"


def test_training_logs_the_logic_summary(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 <= summary["logic_top1"] <= summary["logic_top5"] <= 1.0
    assert summary["logic_negation_ppl_ratio"] > 0
    last = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["logic_copying_top1"] == summary["logic_copying_top1"]


def test_val_reproduces_the_trainers_validation_loss(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert val.main([str(run_dir), "--tokens", "1024", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["val_loss"] == pytest.approx(summary["final_val_loss"], abs=1e-6) and out["tokens"] == 1024
    again = val.run_validation_loss(load_run(run_dir), tokens=1024)
    assert again["val_loss"] == out["val_loss"]  # deterministic


def test_logic_cli_writes_every_category_with_its_count(run_dir, tmp_path, capsys):
    out = tmp_path / "logic.json"
    assert logic.main([str(run_dir), "--n", "3", "--out", str(out), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data["categories"]) == set(logic.CATEGORIES)
    assert all(c["n"] == 3 for c in data["categories"].values())
    assert data["meta"]["biases"] == "mean" and data["meta"]["tokenizer"] == "byte"
    assert all(c in table for c in logic.CATEGORIES)
    # the in-training summary used the same items (seed 0, n 3) and the same model
    summary = json.loads((run_dir / "summary.json").read_text())
    assert data["summary"]["logic_top5"] == pytest.approx(summary["logic_top5"])
    assert logic.main([str(run_dir), "--n", "3", "--out", str(out), "--no_bias", "--device", "cpu"]) == 0
    nobias = json.loads(out.read_text())
    assert nobias["meta"]["biases"] == "none"
    assert nobias["categories"]["copying"]["logprob"] != data["categories"]["copying"]["logprob"]


def test_alignment_cli_writes_json_array_and_heatmaps(run_dir, tmp_path):
    out = tmp_path / "align"
    assert alignment.main([str(run_dir), "--out", str(out), "--positions", "3", "--k", "10", "--device", "cpu"]) == 0
    data = json.loads((out / "alignment.json").read_text())
    assert data["direction"] == "bq" and data["positions"] == [0, 32, 63] and data["k"] == 10
    assert len(data["layers"]) == 1 and len(data["layers"][0]["heads"]) == 2
    assert "freq_top1pct" in data["classes"] and "digits" in data["layers"][0]["heads"][0]["enrichment_top"]
    assert np.load(out / "cosines.npy").shape == (1, 2, 257)
    assert (out / "heatmap_layer0.png").stat().st_size > 5000 and (out / "enrichment.png").exists()
    assert np.load(out / "paper_cosines.npy").shape == (1, 2, 257)
    assert np.load(out / "positional.npy").shape == (1, 2, 64)  # every position of the context
    assert (out / "positional_heatmap.png").stat().st_size > 5000 and (out / "positional_layers.png").exists()
    assert len(data["paper"]["layers"][0]["heads"][0]["top"]) == 20
    null = tmp_path / "null"
    assert alignment.main([str(run_dir), "--out", str(null), "--direction", "draw", "--device", "cpu"]) == 0
    assert json.loads((null / "alignment.json").read_text())["direction"] == "draw"


def test_export_cli_gives_the_runs_logits_and_tokenizer(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert hf.main(["export", str(run_dir), str(tmp_path / "hf")]) == 0
    run = load_run(run_dir)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    text = "Return the list's héllo, 12 items.\n"
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert tok(text)["input_ids"] == run.tokenizer.encode(text) and tok.eos_token_id == run.tokenizer.eot
    assert tok.model_max_length == run.model.config.block_size
    idx = torch.randint(0, 257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, run.model(idx)[0][..., :257], atol=1e-4, rtol=0)


def test_user_errors_end_with_one_line(tmp_path, capsys):
    for main in (val.main, logic.main):
        assert main([str(tmp_path / "missing")]) == 2
    assert alignment.main([str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert hf.main(["export", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: run dir") for line in err)
