"""The quickstart on BPE tokens (configs/quickstart.toml): the built-in corpus is tokenized once by a BPE trained
on it, reused by every later run, and a run on it samples text made of whole words and word pieces.

The corpus is cut to pydoc's first topics here, so that the BPE trains in about a second; the other tests
train on bytes (configs/quickstart-byte.toml) and never train a tokenizer."""

import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

import train
from configs import DataConfig, load_config
from data import sources
from data.builtin import documents
from data.dataset import builtin_dataset, resolve_folder
from data.tokenizer import bpe_tokenizer

from helpers import BYTE_QUICKSTART, CONFIGS, QUIET, TINY_GPT, one_line_error, snapshot

SAMPLE_TOKENS = 16
TINY = [*TINY_GPT, *QUIET, "--train.batch_size=4", "--train.max_steps=6", "--eval.interval=0", "--eval.tokens=512"]


@pytest.fixture
def small_corpus(monkeypatch):
    """The built-in corpus cut to its first 60 documents (language-reference topics, about 0.3 MB)."""
    docs = list(itertools.islice(documents(), 60))
    monkeypatch.setattr(sources, "documents", lambda: iter(docs))


def quickstart(tmp_path, name: str, *extra: str) -> int:
    """The default config (the BPE quickstart), shrunk, with its prepared data under ``tmp_path``/prepared."""
    argv = [f"--run.dir={tmp_path / 'runs'}", f"--run.name={name}", f"--data.root={tmp_path / 'prepared'}"]
    return train.main([*argv, *TINY, *extra])


def test_the_quickstart_is_bpe_and_the_byte_configs_stay_bytes():
    tokenizer, vocab = builtin_dataset(load_config(None).data)[1:]
    assert tokenizer == "bpe" and 257 < vocab <= 8192  # an output layer a width-128 model can afford
    for config in (BYTE_QUICKSTART, CONFIGS / "grid" / "cpu.toml", CONFIGS / "small_tasks" / "gpt_symmetries.toml"):
        assert builtin_dataset(load_config(config).data)[1] == "byte", config


@pytest.mark.parametrize(
    "name,expected",
    [
        ("builtin", ("builtin-byte", "byte")),
        ("builtin-byte", ("builtin-byte", "byte")),
        ("builtin-bpe", ("builtin-bpe", "bpe")),
        ("builtin-bpe3000", ("builtin-bpe3000", "bpe")),
        ("builtin-bpe0", None),  # not a built-in name: an ordinary prepared dataset of that name
        ("mine", None),
    ],
)
def test_built_in_dataset_names(name, expected):
    found = builtin_dataset(DataConfig(name=name))
    assert (found and found[:2]) == expected
    if name == "builtin-bpe3000":
        assert found[2] == 3000


def test_a_bpe_quickstart_run_trains_samples_text_and_reuses_its_tokenizer(small_corpus, tmp_path, capsys):
    assert quickstart(tmp_path, "first", f"--eval.sample_tokens={SAMPLE_TOKENS}") == 0
    assert "preparing the built-in corpus" in capsys.readouterr().out
    name, _, vocab = builtin_dataset(load_config(None).data)
    folder = tmp_path / "prepared" / name
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == ("bpe", vocab, vocab - 1)
    run = tmp_path / "runs" / "first"
    assert json.loads((run / "tokenizer" / "meta.json").read_text()) == meta  # the run dir keeps its tokenizer
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    sample, prompt = summary["sample"], load_config(None).eval.sample_prompt
    # A byte model's token is at most one character; BPE tokens are words and word pieces.
    assert sample.startswith(prompt) and len(sample) - len(prompt) > 2 * SAMPLE_TOKENS
    tok = bpe_tokenizer(folder / "tokenizer.json")
    assert tok.decode(tok.encode(sample)) == sample

    before = snapshot(folder)
    assert quickstart(tmp_path, "second") == 0
    assert "preparing" not in capsys.readouterr().out
    assert snapshot(folder) == before  # prepared once: the second run read the same files


def test_runs_that_start_together_share_one_preparation(small_corpus, tmp_path):
    """Two runs asking for a missing BPE dataset at once: one trains it, the other waits and reads it."""
    cfg = DataConfig(name="builtin-bpe300", root=str(tmp_path))
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: resolve_folder(cfg), range(2)))
    assert folders == [tmp_path / "builtin-bpe300"] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builtin-bpe300"]  # no partial folder, no lock left
    assert json.loads((folders[0] / "meta.json").read_text())["vocab_size"] == 300
    assert bpe_tokenizer(folders[0] / "tokenizer.json").vocab_size == 300


def test_data_path_replaces_the_quickstarts_bpe(data_dir, tmp_path):
    """``--data.path`` trains the quickstart on any prepared dataset: here the byte-level synthetic one."""
    assert quickstart(tmp_path, "bytes", f"--data.path={data_dir}") == 0
    assert json.loads((tmp_path / "runs" / "bytes" / "tokenizer" / "meta.json").read_text())["tokenizer"] == "byte"
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--data.name=builtin-bpe100"], "asks for a 100-token BPE"),
        (["--data.tokenizer=byte"], "holds bpe tokens but data.tokenizer is byte"),
    ],
)
def test_a_bad_built_in_name_is_one_line_and_prepares_nothing(extra, needle, tmp_path, capsys):
    assert quickstart(tmp_path, "bad", *extra) == 2
    assert needle in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "runs" / "bad").exists()
