"""Where documents come from: the ``--source`` of ``python -m data.prepare``.

- ``builtin``: the built-in corpus (data/builtin.py).
- ``openwebtext``, ``fineweb-edu`` (its sample-10BT subset), or ``hf:NAME`` / any other dataset name:
  read through Hugging Face ``datasets`` (streamed by default, or downloaded into its cache), one
  document per row of the text column.
- ``files:PATH`` (or a bare existing PATH): a file, a folder (searched recursively) or a glob of
  ``.txt`` (one document per file, or per part between two ``--doc_separator``), ``.jsonl`` (one
  document per line, a text field) and ``.parquet`` (one document per row, a text column) files,
  read in sorted order.

A source yields pieces ``(text, starts_document)``: a long ``.txt`` file arrives in pieces cut at line
ends so that no step holds a whole file in memory; every other document is one piece.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from configs import UserError
from data.builtin import documents

HF_ALIASES = {
    "openwebtext": ("Skylion007/openwebtext", None),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT"),
}
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
TXT_PIECE_CHARS = 1 << 22
HF_BATCH = 1000  # rows per read from datasets: row-at-a-time iteration is several times slower

Piece = tuple[str, bool]


@dataclass
class Source:
    name: str  # what the user asked for, recorded in meta.json
    detail: str  # what was actually read
    prefix: str  # shard names: {prefix}_{split}_NNNNNN.bin
    pieces: Callable[[], Iterator[Piece]]  # a fresh pass over the corpus at every call


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "corpus"


def resolve_source(
    spec: str,
    text_field: str = "text",
    hf_config: str | None = None,
    hf_split: str = "train",
    streaming: bool = True,
    data_files: list[str] | None = None,
    doc_separator: str = "",
) -> Source:
    """Turn a ``--source`` value into a Source."""
    if spec == "builtin":
        return Source("builtin", "the built-in corpus (Python's own documentation)", "builtin", builtin_pieces)
    if spec.startswith("files:"):
        return file_source(spec, spec.removeprefix("files:"), text_field, doc_separator)
    if spec.startswith("hf:"):
        return hf_source(spec, spec.removeprefix("hf:"), hf_config, hf_split, text_field, streaming, data_files)
    if spec in HF_ALIASES:
        name, config = HF_ALIASES[spec]
        return hf_source(spec, name, hf_config or config, hf_split, text_field, streaming, data_files)
    if Path(spec).expanduser().exists() or glob.has_magic(spec):
        return file_source(spec, spec, text_field, doc_separator)
    if Path(spec).suffix in FILE_SUFFIXES or spec.startswith((".", "/", "~")):
        raise UserError(f"no file or folder '{spec}'; check the path (local sources are files:PATH)")
    return hf_source(spec, spec, hf_config, hf_split, text_field, streaming, data_files)


def builtin_pieces() -> Iterator[Piece]:
    for doc in documents():
        yield doc, True


# --- local files ------------------------------------------------------------------------------


def expand_files(pattern: str) -> list[Path]:
    """The files a ``files:`` source names, sorted: one file, a folder (recursive) or a glob."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES)
        if not files:
            raise UserError(f"no {', '.join(FILE_SUFFIXES)} files in folder '{pattern}'; point at one that has some")
        return files
    if path.is_file():
        files = [path]
    elif glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"no files match '{pattern}'; check the pattern")
    else:
        raise UserError(f"no file or folder '{pattern}'; check the path")
    for p in files:
        if p.suffix not in FILE_SUFFIXES:
            raise UserError(f"cannot read '{p}': unsupported file type; use {', '.join(FILE_SUFFIXES)} files")
    return files


def file_source(name: str, pattern: str, text_field: str, doc_separator: str = "") -> Source:
    files = expand_files(pattern)
    readers = {
        ".txt": lambda path: txt_pieces(path, doc_separator),
        ".jsonl": lambda path: jsonl_pieces(path, text_field),
        ".parquet": lambda path: parquet_pieces(path, text_field),
    }

    def pieces() -> Iterator[Piece]:
        for path in files:
            yield from readers[path.suffix](path)

    detail = f"{len(files)} file(s): {files[0]}" + (f" ... {files[-1]}" if len(files) > 1 else "")
    base = Path(pattern.split("*")[0].rstrip("/")).name or "corpus"
    return Source(name, detail, slug(Path(base).stem), pieces)


def txt_pieces(path: Path, doc_separator: str = "") -> Iterator[Piece]:
    """One document per file, or per ``doc_separator``-separated part; long ones in pieces cut at line ends.

    Memory stays within about two TXT_PIECE_CHARS blocks whatever the file or document size; pieces
    of one document tokenize independently, so a cut may change a token or two at the seam.
    """
    keep = max(len(doc_separator) - 1, 0)  # never cut through a separator that straddles two blocks
    pending, starts = "", True
    try:
        with open(path, encoding="utf-8", newline="") as f:
            while block := f.read(TXT_PIECE_CHARS):
                pending += block
                if doc_separator:
                    *docs, pending = pending.split(doc_separator)
                    for doc in docs:
                        if doc:
                            yield doc, starts
                        starts = True
                if len(pending) > TXT_PIECE_CHARS + keep:
                    limit = len(pending) - keep
                    cut = pending.rfind("\n", 0, limit) + 1 or limit
                    yield pending[:cut], starts
                    pending, starts = pending[cut:], False
    except UnicodeDecodeError as e:
        raise UserError(f"'{path}' is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    if pending:
        yield pending, starts


def jsonl_pieces(path: Path, text_field: str) -> Iterator[Piece]:
    """One document per line: the ``text_field`` of each JSON object."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise UserError(f"'{path}' line {lineno} is not valid JSON; fix or remove that line") from None
            if not isinstance(record, dict) or text_field not in record:
                fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise UserError(
                    f"'{path}' line {lineno} has no field '{text_field}' (it has: {fields}); pass --text_field NAME"
                )
            text = record[text_field]
            if text:
                yield _as_text(text, f"'{path}' line {lineno}", text_field), True


def parquet_pieces(path: Path, text_field: str) -> Iterator[Piece]:
    """One document per row of the ``text_field`` column, read a batch of rows at a time."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"cannot read '{path}' as parquet ({e}); check the file") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise UserError(f"'{path}' has no column '{text_field}' (it has: {', '.join(names)}); pass --text_field NAME")
    for batch in pf.iter_batches(batch_size=HF_BATCH, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text:
                yield _as_text(text, f"'{path}'", text_field), True


def _as_text(value: object, where: str, text_field: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: field '{text_field}' holds {type(value).__name__}, not text; pass --text_field NAME")
    return value


# --- Hugging Face datasets --------------------------------------------------------------------


def hf_source(
    spec: str,
    name: str,
    config: str | None,
    split: str,
    text_field: str,
    streaming: bool,
    data_files: list[str] | None,
) -> Source:
    def pieces() -> Iterator[Piece]:
        ds = open_hf_dataset(name, config, split, streaming, data_files)
        for rows in ds.iter(batch_size=HF_BATCH):
            if text_field not in rows:
                raise UserError(
                    f"dataset '{name}' has no column '{text_field}' (it has: {', '.join(rows)}); pass --text_field NAME"
                )
            for text in rows[text_field]:
                if text:
                    yield _as_text(text, f"dataset '{name}'", text_field), True

    detail = f"datasets: {name}" + (f" ({config})" if config else "") + f", split {split}"
    detail += ", streamed" if streaming else ", cached"
    return Source(spec, detail, slug(name.rstrip("/").split("/")[-1]), pieces)


def open_hf_dataset(name: str, config: str | None, split: str, streaming: bool, data_files: list[str] | None):
    try:
        import datasets
    except ImportError:
        raise UserError("reading a Hugging Face dataset needs datasets; pip install -e .[hf]") from None
    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming, data_files=data_files)
    except Exception as e:  # offline, unknown name, gated, bad config or split: all end here
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot open dataset '{name}' through datasets ({reason}); check the name, --hf_config, "
            "--hf_split and the network, or prepare local files with --source files:PATH"
        ) from None
