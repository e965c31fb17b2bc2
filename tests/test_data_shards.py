"""The llm.c shard layout: a file from an independent writer reads back; bad files fail in one clear line."""

import struct
from pathlib import Path

import numpy as np
import pytest

import train
from configs import DataConfig, UserError
from data import shards
from data.dataset import open_dataset
from data.loader import TokenStream
from data.shards import find_shards, max_token, open_shard, read_header, write_shard

from helpers import gpt2_ranks


def write_llmc(path: Path, tokens: list[int], magic: int = 20240520, version: int = 1, count: int | None = None):
    """A minimal writer of the llm.c layout, independent of data.shards: 256 little-endian int32, then tokens."""
    n = len(tokens) if count is None else count
    header = struct.pack("<256i", magic, version, n, *([0] * 253))
    body = struct.pack(f"<{len(tokens)}{'H' if version == 1 else 'I'}", *tokens)
    path.write_bytes(header + body)


def test_a_shard_from_an_independent_writer_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50257, size=1000).tolist()
    write_llmc(tmp_path / "fineweb_train_000001.bin", tokens)
    assert read_header(tmp_path / "fineweb_train_000001.bin") == (1, 1000)
    assert open_shard(tmp_path / "fineweb_train_000001.bin").tolist() == tokens
    stream = TokenStream([tmp_path / "fineweb_train_000001.bin"], 2, 8, shuffle=False, vocab_size=50257)
    x, y = stream.batch(0)
    assert x.tolist() == np.array(tokens[:16]).reshape(2, 8).tolist()
    assert y.tolist() == np.array(tokens[1:17]).reshape(2, 8).tolist()


def test_the_writer_matches_the_independent_layout_byte_for_byte(tmp_path):
    tokens = [50256, 1, 2, 65535, 0]
    write_shard(tmp_path / "a.bin", np.array(tokens), vocab_size=65536)
    write_llmc(tmp_path / "b.bin", tokens)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_large_vocabularies_use_the_uint32_variant(tmp_path):
    tokens = [0, 65536, 100_000, 7]
    write_shard(tmp_path / "a.bin", np.array(tokens), vocab_size=100_277)
    write_llmc(tmp_path / "b.bin", tokens, version=2)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert read_header(tmp_path / "a.bin") == (2, 4)
    assert open_shard(tmp_path / "a.bin").tolist() == tokens


def test_llmc_file_names_tell_the_splits_apart(tmp_path):
    names = [
        "fineweb_train_000001.bin",
        "fineweb_train_000002.bin",
        "fineweb_val_000000.bin",
        "tiny_shakespeare_val.bin",
        "train_000000.bin",
        "my-validation-set_train_000000.bin",
        "notes.txt",
    ]
    for name in names:
        write_llmc(tmp_path / name, [1, 2, 3])
    assert [p.name for p in find_shards(tmp_path, "train")] == [
        "fineweb_train_000001.bin",
        "fineweb_train_000002.bin",
        "my-validation-set_train_000000.bin",
        "train_000000.bin",
    ]
    assert [p.name for p in find_shards(tmp_path, "val")] == ["fineweb_val_000000.bin", "tiny_shakespeare_val.bin"]


def test_shards_without_meta_json_are_read_as_gpt2_only_when_asked(tmp_path, monkeypatch):
    """Nothing in a folder of bare shards says what its tokens are: guessing GPT-2 would train a byte-level
    folder as GPT-2 without a word, so the tokenizer must be named (llm.c's shards: --data.tokenizer=gpt2)."""
    monkeypatch.setenv("GPT2_BPE_FILE", str(gpt2_ranks()))
    write_llmc(tmp_path / "fineweb_train_000000.bin", list(range(0, 50257, 50)))
    write_llmc(tmp_path / "fineweb_val_000000.bin", list(range(1, 50257, 50)))
    with pytest.raises(UserError, match="no meta.json.*--data.tokenizer=gpt2"):
        open_dataset(DataConfig(path=str(tmp_path)))
    data = open_dataset(DataConfig(path=str(tmp_path), tokenizer="gpt2"))
    assert (data.tokenizer.name, data.tokenizer.vocab_size, data.tokenizer.eot) == ("gpt2", 50257, 50256)
    assert data.stream("train", 1, 16, seed=0).per_epoch == len(range(0, 50257, 50)) // 16
    with pytest.raises(UserError, match="has no meta.json, which a byte tokenizer needs"):
        open_dataset(DataConfig(path=str(tmp_path), tokenizer="byte"))


def test_the_chunked_max_equals_numpy_max(monkeypatch):
    monkeypatch.setattr(shards, "MAX_CHUNK", 7)
    a = np.random.default_rng(1).integers(0, 60000, size=1001).astype(np.uint16)
    for n in (0, 1, 6, 7, 8, 1001):
        assert max_token(a[:n]) == (int(a[:n].max()) if n else 0)


def error_of(fn) -> str:
    with pytest.raises(UserError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message
    return message


def test_a_truncated_shard_is_named(tmp_path):
    path = tmp_path / "x_train_000000.bin"
    write_llmc(path, list(range(100)))
    path.write_bytes(path.read_bytes()[:-2])
    message = error_of(lambda: TokenStream([path], 1, 8))
    assert str(path) in message and "truncated" in message and "99" not in message.split("promises")[0]
    path.write_bytes(path.read_bytes()[:100])  # shorter than the header itself
    assert "truncated" in error_of(lambda: open_shard(path))


def test_a_wrong_magic_number_is_named(tmp_path):
    path = tmp_path / "x_train_000000.bin"
    write_llmc(path, list(range(100)), magic=20240101)
    message = error_of(lambda: TokenStream([path], 1, 8))
    assert str(path) in message and "magic number 20240101" in message
    write_llmc(path, list(range(100)), magic=20240801, version=7)  # llm.c's LLaMA-3 layout
    assert "LLaMA-3" in error_of(lambda: TokenStream([path], 1, 8))


def test_an_out_of_vocabulary_token_is_named(tmp_path):
    good, bad = tmp_path / "x_train_000000.bin", tmp_path / "x_train_000001.bin"
    write_llmc(good, [256] + [65] * 99)
    write_llmc(bad, [256] + [65] * 50 + [300] + [65] * 48)
    message = error_of(lambda: TokenStream([good, bad], 1, 8, vocab_size=257))
    assert str(bad) in message and "token 300" in message and "257" in message


def test_the_trainer_reports_a_bad_shard_in_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_llmc(data / "x_train_000000.bin", [i % 257 for i in range(3000)])
    write_llmc(data / "x_val_000000.bin", list(range(100)), count=200)
    (data / "meta.json").write_text('{"tokenizer": "byte", "vocab_size": 257}')
    code = train.main([f"--run.dir={tmp_path}/runs", f"--data.path={data}", "--train.progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert err[0].startswith("error: shard") and "x_val_000000.bin" in err[0] and "Traceback" not in err[0]
