"""The quickstart path end to end on bytes (configs/quickstart-byte.toml): config -> trainer -> run dir, in every
mode and base optimizer. The BPE quickstart (configs/quickstart.toml) is in test_quickstart_bpe.py."""

import json

import pytest

import train

from helpers import BYTE_QUICKSTART, TINY_GPT

FAST = ["--eval.tokens=8192", "--eval.sample_tokens=0", "--train.progress=false", "--eval.interval=0"]


def run(tmp_path, name: str, *args: str) -> dict:
    assert train.main([BYTE_QUICKSTART, f"--run.dir={tmp_path}", f"--run.name={name}", *FAST, *args]) == 0
    return json.loads((tmp_path / name / "summary.json").read_text())


def test_quickstart_lowers_the_loss_within_a_few_dozen_steps(tmp_path):
    summary = run(tmp_path, "qs", "--train.max_steps=30")
    assert summary["steps"] == 30 and summary["tokens"] == 30 * 16 * 128
    # ln(257) = 5.55 at init; 30 steps of byte-level AdamW must get well below it
    assert summary["initial_val_loss"] > 5.0
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 1.5
    run_dir = tmp_path / "qs"
    assert (run_dir / "config.toml").exists() and list(run_dir.glob("ckpt_*.pt"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and "val_loss" in records[0]
    assert [r["step"] for r in records if "train_loss" in r] == list(range(10, 31, 10))


@pytest.mark.parametrize("mode", ["symmetric", "bq", "bqbv"])
@pytest.mark.parametrize("optim", ["adamw", "sgdm"])
def test_every_mode_and_base_optimizer_trains(tmp_path, mode, optim):
    lr = "--optim.lr=0.003" if optim == "adamw" else "--optim.lr=0.3"
    summary = run(
        tmp_path,
        f"{mode}-{optim}",
        f"--symmetry.mode={mode}",
        f"--optim.name={optim}",
        lr,
        "--train.max_steps=8",
        *TINY_GPT,
        "--train.log_interval=4",
    )
    assert summary["final_val_loss"] < summary["initial_val_loss"]


def test_sample_is_written_to_the_summary(tmp_path):
    summary = run(tmp_path, "s", "--train.max_steps=2", "--eval.sample_tokens=20", "--model.n_layer=1")
    assert isinstance(summary["sample"], str) and summary["sample"].startswith("The ")


def test_the_closing_sample_follows_its_temperature_and_top_k(tmp_path):
    """Temperature 0 takes the most likely token each time, as top-k 1 does at any temperature; a hot draw
    from the top 40 of the same model does not."""
    sample = ["--train.max_steps=2", "--eval.sample_tokens=20", "--model.n_layer=1"]
    greedy = run(tmp_path, "t0", *sample, "--eval.sample_temperature=0")
    top1 = run(tmp_path, "k1", *sample, "--eval.sample_top_k=1", "--eval.sample_temperature=2")
    drawn = run(tmp_path, "t2", *sample, "--eval.sample_temperature=2")
    assert greedy["sample"] == top1["sample"]
    assert drawn["sample"] != top1["sample"]


def test_a_run_dir_is_readable_without_its_data(tmp_path):
    import shutil

    from configs import DataConfig
    from data.dataset import resolve_folder
    from eval.run import load_run
    from eval.sample import sample_text

    data = tmp_path / "data"
    shutil.copytree(resolve_folder(DataConfig()), data)
    run(tmp_path, "moved", "--train.max_steps=2", "--model.n_layer=1", f"--data.path={data}")
    shutil.rmtree(data)
    loaded = load_run(tmp_path / "moved")
    assert loaded.tokenizer.name == "byte" and loaded.model.config.vocab_size == 257
    assert sample_text(loaded.model, loaded.tokenizer, "The ", 5).startswith("The ")
