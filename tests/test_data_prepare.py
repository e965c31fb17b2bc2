"""python -m data.prepare: sources, tokenizers, splits and budgets, checked by decoding the shards back."""

import json
from pathlib import Path

import numpy as np
import pytest

from configs import DataConfig, UserError
from data import prepare as prep
from data import sources
from data.dataset import open_dataset
from data.prepare import main, prepare
from data.shards import find_shards, open_shard
from data.sources import resolve_source
from data.tokenizer import Tokenizer, get_tokenizer

from helpers import gpt2_ranks

WORDS = "the of a model attention query value symmetry bias optimizer token shard loss step".split()


def make_docs(n: int = 40) -> list[str]:
    """Varied text: unicode, CRLF, tabs, digits, contractions, a literal end-of-text string."""
    rng = np.random.default_rng(0)
    special = [
        "Hello, world!",
        "naïve café — 日本語のテキスト 🙂 and Ünïcödé",
        "line one\r\nline two\n\n\ttabbed   spaces  ",
        "it's we'll they're 12345 3.14159 x=y+1;",
        "a literal <|endoftext|> inside a document stays text",
        "   leading spaces and trailing newline\n",
    ]
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(5, 120)))
        docs.append(special[i % len(special)] + " " + " ".join(words) + ".")
    return docs


@pytest.fixture
def corpus(tmp_path) -> tuple[list[str], Path]:
    docs = make_docs()
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return docs, path


@pytest.fixture
def ranks(monkeypatch) -> Path:
    path = gpt2_ranks()
    monkeypatch.setenv("GPT2_BPE_FILE", str(path))
    return path


def decoded(folder: Path, split: str, tok: Tokenizer) -> list[str]:
    """The documents of a split: shards concatenated, cut at end-of-text, each decoded."""
    tokens = np.concatenate([open_shard(f) for f in find_shards(folder, split)]).astype(np.int64)
    assert tokens[0] == tok.eot
    cuts = np.flatnonzero(tokens == tok.eot).tolist() + [len(tokens)]
    return [tok.decode(tokens[a + 1 : b].tolist()) for a, b in zip(cuts, cuts[1:])]


def split_docs(docs: list[str], val_every: int) -> tuple[list[str], list[str]]:
    return [d for i, d in enumerate(docs) if i % val_every], [d for i, d in enumerate(docs) if i % val_every == 0]


def run(source: str, tokenizer: str, out: Path, **kw) -> dict:
    kw = {"val_every": 5, "val_tokens": 0, "progress": False, **kw}
    return prepare(resolve_source(source, data_files=kw.pop("data_files", None)), tokenizer, out, **kw)


def test_byte_round_trip_from_jsonl(tmp_path, corpus):
    docs, path = corpus
    meta = run(f"files:{path}", "byte", tmp_path / "out")
    train, val = split_docs(docs, 5)
    tok = open_dataset(DataConfig(path=str(tmp_path / "out"))).tokenizer
    assert decoded(tmp_path / "out", "train", tok) == train
    assert decoded(tmp_path / "out", "val", tok) == val
    assert meta["tokens"]["train"] == sum(len(d.encode()) + 1 for d in train)
    assert meta["documents"] == {"train": len(train), "val": len(val)}
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("byte", 257, "uint16")


def test_gpt2_round_trip_and_tiktoken_equality(tmp_path, corpus, ranks, monkeypatch):
    """Shards hold exactly tiktoken's own r50k_base encoding (GPT-2's ranks), built from the local file."""
    import tiktoken
    import tiktoken.load

    def local_only(blobpath: str) -> bytes:
        assert blobpath.endswith("r50k_base.tiktoken"), f"tiktoken tried to fetch {blobpath}"
        return ranks.read_bytes()

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache: every read goes through read_file
    monkeypatch.setattr(tiktoken.load, "read_file", local_only)
    reference = tiktoken.get_encoding("r50k_base")  # tiktoken also checks the file's sha256

    docs, path = corpus
    out = tmp_path / "out"
    run(f"files:{path}", "gpt2", out)
    tok = open_dataset(DataConfig(path=str(out))).tokenizer
    train, val = split_docs(docs, 5)
    assert decoded(out, "train", tok) == train and decoded(out, "val", tok) == val
    expected = np.concatenate([[50256] + reference.encode_ordinary(d) for d in train])
    assert open_shard(find_shards(out, "train")[0]).tolist() == expected.tolist()
    for d in docs:
        assert tok.encode(d) == reference.encode_ordinary(d) == tok.encode_array(d).tolist()


def test_bpe_is_trained_saved_and_loaded_back(tmp_path, corpus):
    docs, path = corpus
    out = tmp_path / "out"
    meta = run(f"files:{path}", "bpe", out, vocab_size=400)
    assert (out / "tokenizer.json").is_file() and meta["tokenizer_file"] == "tokenizer.json"
    tok = open_dataset(DataConfig(path=str(out))).tokenizer
    assert (tok.name, tok.vocab_size, tok.eot) == ("bpe", meta["vocab_size"], meta["eot"])
    assert meta["vocab_size"] <= 400 and tok.eot == meta["vocab_size"] - 1
    assert len(tok.encode(docs[1])) < len(docs[1].encode())  # it learned merges
    train, val = split_docs(docs, 5)
    assert decoded(out, "train", tok) == train and decoded(out, "val", tok) == val


def test_txt_parquet_and_jsonl_give_the_same_documents(tmp_path, corpus, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs, path = corpus
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"doc{i:03d}.txt").write_text(d, newline="")
    pq.write_table(pa.table({"body": docs}), tmp_path / "docs.parquet")
    monkeypatch.setattr(sources, "TXT_PIECE_CHARS", 16)  # long files arrive in pieces cut at line ends
    tok = get_tokenizer("byte")
    for source, text_field in [
        (str(folder), "text"),
        (f"files:{tmp_path}/*.parquet", "body"),
        (f"files:{path}", "text"),
    ]:
        out = tmp_path / "out"
        prepare(
            resolve_source(source, text_field), "byte", out, val_every=5, val_tokens=0, progress=False, overwrite=True
        )
        assert decoded(out, "train", tok) + decoded(out, "val", tok) == sum(split_docs(docs, 5), []), source


@pytest.mark.parametrize("separator", ["<|endoftext|>", "\n\n"])
def test_a_txt_file_cut_into_documents_by_a_separator(tmp_path, monkeypatch, separator):
    docs = [d.replace(separator, " ") for d in make_docs()]  # no separator inside a document
    (tmp_path / "all.txt").write_text(separator.join(docs) + separator, newline="")
    tok = get_tokenizer("byte")
    for piece_chars in (7, 64, 1 << 20):  # separators straddle blocks; documents span several pieces
        monkeypatch.setattr(sources, "TXT_PIECE_CHARS", piece_chars)
        out = tmp_path / f"out{piece_chars}"
        source = resolve_source(str(tmp_path / "all.txt"), doc_separator=separator)
        prepare(source, "byte", out, val_every=5, val_tokens=0, progress=False)
        assert (decoded(out, "train", tok), decoded(out, "val", tok)) == split_docs(docs, 5), piece_chars


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_more_workers_give_identical_shards(tmp_path, corpus, monkeypatch, start_method):
    docs, path = corpus
    monkeypatch.setattr(prep, "CHUNK_CHARS", 300)  # many small tasks, so their order matters
    monkeypatch.setattr(prep, "START_METHOD", start_method)
    run(f"files:{path}", "byte", tmp_path / "one", workers=1)
    run(f"files:{path}", "byte", tmp_path / "two", workers=2)
    for split in ("train", "val"):
        ones, twos = find_shards(tmp_path / "one", split), find_shards(tmp_path / "two", split)
        assert [f.read_bytes() for f in ones] == [f.read_bytes() for f in twos]


def test_token_budget_val_cap_and_shard_size(tmp_path, corpus):
    docs, path = corpus
    out = tmp_path / "out"
    meta = run(f"files:{path}", "byte", out, max_tokens=3000, val_every=3, val_tokens=500, shard_tokens=1000)
    assert meta["tokens"]["train"] == 3000 and meta["shards"]["train"] == 3
    assert [len(open_shard(f)) for f in find_shards(out, "train")] == [1000, 1000, 1000]
    val_sizes = [len(d.encode()) + 1 for i, d in enumerate(docs) if i % 3 == 0]
    assert 500 <= meta["tokens"]["val"] < 500 + max(val_sizes)
    tok = get_tokenizer("byte")
    val = decoded(out, "val", tok)
    assert val == [d for i, d in enumerate(docs) if i % 3 == 0][: len(val)]
    train = decoded(out, "train", tok)  # documents cross shard boundaries intact; the last one is cut
    expected = [d for d in docs if d not in val]
    assert train[:-1] == expected[: len(train) - 1] and expected[len(train) - 1].startswith(train[-1])


def test_datasets_reads_local_jsonl_and_parquet(tmp_path, corpus):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs, path = corpus
    pq.write_table(pa.table({"text": docs}), tmp_path / "docs.parquet")
    tok = get_tokenizer("byte")
    expected = split_docs(docs, 5)
    for builder, files in [("json", [str(path)]), ("parquet", [str(tmp_path / "docs.parquet")])]:
        source = resolve_source(f"hf:{builder}", data_files=files)
        assert source.detail.startswith(f"datasets: {builder}")
        out = tmp_path / builder
        prepare(source, "byte", out, val_every=5, val_tokens=0, progress=False)
        assert (decoded(out, "train", tok), decoded(out, "val", tok)) == expected
    with pytest.raises(UserError, match="no column 'body'"):
        list(resolve_source("hf:json", "body", data_files=[str(path)]).pieces())


def test_a_prepared_dataset_is_found_by_name(tmp_path, corpus):
    docs, path = corpus
    run(f"files:{path}", "byte", tmp_path / "root" / "mycorpus")
    data = open_dataset(DataConfig(name="mycorpus", root=str(tmp_path / "root")))
    assert data.meta["source"] == f"files:{path}" and data.stream("train", 2, 16, seed=0).per_epoch > 0
    with pytest.raises(UserError, match="python -m data.prepare"):
        open_dataset(DataConfig(name="other", root=str(tmp_path / "root")))


def test_gpt2_without_ranks_says_how_to_provide_them(monkeypatch, tmp_path):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.delenv("GPT2_BPE_FILE", raising=False)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UserError, match="GPT2_BPE_FILE=PATH") as e:
        get_tokenizer("gpt2")
    assert "--bpe_file" in str(e.value)
    (tmp_path / "bad.tiktoken").write_text("not ranks\n")
    with pytest.raises(UserError, match="not a GPT-2 ranks file"):
        get_tokenizer("gpt2", tmp_path / "bad.tiktoken")


def test_cli_errors_are_one_line(tmp_path, corpus, capsys):
    docs, path = corpus
    cases = [
        ["--source", str(tmp_path / "missing.jsonl")],
        ["--source", f"files:{path}", "--text_field", "body"],
        ["--source", f"files:{path}", "--tokenizer", "byte", "--val_every", "1"],
    ]
    for args in cases:
        assert main([*args, "--out", str(tmp_path / "o"), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and "Traceback" not in "".join(err), args
    assert main(["--source", f"files:{path}", "--tokenizer", "byte", "--out", str(tmp_path / "ok")]) == 0
    assert main(["--source", f"files:{path}", "--tokenizer", "byte", "--out", str(tmp_path / "ok")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_an_interrupted_preparation_leaves_nothing_that_looks_like_a_dataset(tmp_path, corpus, monkeypatch):
    """Work goes to OUT.partial and replaces OUT only once complete: an interruption midway leaves an older
    dataset in OUT as it was, and removes the partial folder (data/outdir.py)."""
    from data import prepare as prep
    from data.outdir import partial_folder

    docs, path = corpus
    out = tmp_path / "out"
    run(f"files:{path}", "byte", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_add = prep.Splitter.add

    def interrupted(self, *a, **k):
        real_add(self, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(prep.Splitter, "add", interrupted)
    assert prep.main(["--source", f"files:{path}", "--tokenizer", "byte", "--out", str(out), "--overwrite"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    partial = partial_folder(out)
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "out"]
    monkeypatch.setattr(prep.Splitter, "add", real_add)
    run(f"files:{path}", "byte", out, overwrite=True)
    assert not partial.exists() and (out / "meta.json").exists()
