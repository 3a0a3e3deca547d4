"""Activation datasets on disk: a folder of parquet parts plus `nla_meta.yaml`.

Columns: `activation_vector` (FixedSizeList<float32>[d], raw, never normalised), `doc_id`, `position`, `token`,
`context` (text up to and including the token), `layer`; later stages add e.g. `explanation`.
A single reference-style parquet (columns `detokenized_text_truncated`, `activation_layer`, `n_raw_tokens`) reads too.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nlakit.errors import NlakitError
from nlakit.io import atomic_write
from nlakit.meta import AR_TEMPLATE, DatasetMeta, read_dataset_meta, write_dataset_meta

PART_GLOB = "part-*.parquet"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def make_table(vectors: np.ndarray, columns: dict[str, list]) -> pa.Table:
    """A table with `activation_vector` first, as FixedSizeList<float32>[d] (the reference requires the fixed size)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    arrays = {"activation_vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}
    arrays.update({k: pa.array(v) for k, v in columns.items()})
    return pa.table(arrays)


def write_parquet(path: str | Path, table: pa.Table) -> Path:
    """Atomic parquet write through `pa.OSFile` (a Python file handle can lose the footer)."""

    def _write(tmp: str) -> None:
        with pa.OSFile(tmp, "wb") as sink:
            pq.write_table(table, sink, compression="zstd")

    return atomic_write(path, _write)


def remove_stale_temps(folder: str | Path) -> None:
    """Delete half-written part files a killed run left behind (`.part-*.tmp`); their chunks are redone."""
    for tmp in Path(folder).glob(".part-*.tmp"):
        tmp.unlink(missing_ok=True)


# Logical column <- its physical sources, first present wins. The reference writes `detokenized_text_truncated`,
# `activation_layer`, `n_raw_tokens` (= position + 1), `api_explanation` (stage 2), `response` (AV-SFT: the explanation
# in <explanation> tags) and `prompt` (AR-SFT: the filled AR template, a string; AV-SFT and RL: chat messages).
SOURCES = {
    "context": ("context", "detokenized_text_truncated"),
    "layer": ("layer", "activation_layer"),
    "position": ("position", "n_raw_tokens"),
    "explanation": ("explanation", "api_explanation", "response", "prompt"),
}
_EXPLANATION_RE = re.compile(r"<explanation>(.*?)</explanation>", re.DOTALL)


def split_slice(path: str | Path) -> tuple[Path, slice | None]:
    """`data.parquet@[a:b]` (the reference's row-slice syntax) -> (the file, rows a..b)."""
    text = str(path)
    m = re.fullmatch(r"(.*)@\[(-?\d*):(-?\d*)\]", text)
    if not m:
        if "@[" in text:
            raise NlakitError(f"{text!r}: a row slice is written FILE@[start:stop], e.g. data.parquet@[0:1000]")
        return Path(text), None
    start, stop = (int(x) if x else None for x in m.group(2, 3))
    return Path(m.group(1)), slice(start, stop)


def _is_chat(col: pa.ChunkedArray) -> bool:
    return pa.types.is_list(col.type) or pa.types.is_large_list(col.type)


def _explanations_from(name: str, col: pa.ChunkedArray, path: Path) -> pa.Array:
    """The bare explanation text from a reference column: as is, out of its tags, or out of the AR template."""
    values = col.to_pylist()
    if name == "response":
        out = []
        for v in values:
            m = _EXPLANATION_RE.search(v or "")
            out.append(m.group(1).strip() if m else None)
    elif name == "prompt":
        head, tail = AR_TEMPLATE.split("{explanation}")
        out = [v[len(head) : -len(tail)] if v and v.startswith(head) and v.endswith(tail) else None for v in values]
        if values and all(o is None for o in out):
            raise NlakitError(f"{path}: column 'prompt' is not the AR template, so it holds no explanation")
    else:
        out = values
    return pa.array(out, pa.string())


def _read_one(path: Path, columns: list[str] | None) -> pa.Table:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise NlakitError(
            f"{path} is not a readable parquet file ({str(e).splitlines()[0][:120]}); "
            "delete it and re-run the step that wrote it (it resumes)"
        ) from None
    names = schema.names
    # a chat-message `prompt` (AV-SFT, RL) is not an explanation; only the AR template string is
    prompt_is_text = "prompt" in names and pa.types.is_string(schema.field("prompt").type)
    chosen: dict[str, str] = {}  # logical -> physical
    for logical, sources in SOURCES.items():
        for src in sources:
            if src in names and (src != "prompt" or prompt_is_text):
                chosen[logical] = src
                break
    wanted = list(columns) if columns is not None else None
    physical = None
    if wanted is not None:
        physical = []
        for c in wanted:
            src = chosen.get(c, c if c in names else None)
            if src is None:
                alts = [x for x in SOURCES.get(c, ()) if x != c]
                also = f" (nor {', '.join(alts)})" if alts else ""
                raise NlakitError(f"{path} has no column {c!r}{also}; its columns are: {', '.join(names)}")
            physical.append(src)
    try:
        table = pq.read_table(path, columns=sorted(set(physical)) if physical is not None else None)
    except (pa.ArrowInvalid, OSError) as e:
        raise NlakitError(
            f"{path} is not a readable parquet file ({str(e).splitlines()[0][:120]}); "
            "delete it and re-run the step that wrote it (it resumes)"
        ) from None
    out = {}
    for logical in wanted if wanted is not None else [*names, *(k for k in chosen if k not in names)]:
        if wanted is None and logical in chosen.values() and logical not in chosen:
            continue  # a reference source column, shown under its logical name
        src = chosen.get(logical, logical)
        if src not in table.column_names:
            continue
        col = table.column(src)
        if logical == "explanation":
            col = _explanations_from(src, col, path)
        elif logical == "position" and src == "n_raw_tokens":
            col = pa.compute.subtract(col, 1)
        out[logical] = col
    if wanted is None and "prompt" in names:
        out["prompt"] = table.column("prompt")  # chat messages (or the AR prompt) stay available as they are
    return pa.table(out)


def part_files(path: str | Path) -> list[Path]:
    path = split_slice(path)[0]
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise NlakitError(f"dataset {path} does not exist; run `nla extract` first")
    parts = sorted(path.glob(PART_GLOB))
    if not parts:
        raise NlakitError(f"dataset {path} has no {PART_GLOB} files; run `nla extract --out {path}` (it resumes)")
    return parts


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All rows of a dataset folder (parts in order) or a single parquet file (optionally `FILE@[a:b]`), with
    reference column names mapped to nlakit's (`SOURCES`)."""
    tables = [_read_one(p, columns) for p in part_files(path)]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    rows = split_slice(path)[1]
    if rows is not None:
        start, stop, _ = rows.indices(table.num_rows)
        table = table.slice(start, max(0, stop - start))
    return table


def vector_dim(table: pa.Table) -> int:
    """d of the `activation_vector` column, whether FixedSizeList or a plain list (the reference's float64 lists)."""
    col = table.column("activation_vector")
    if pa.types.is_fixed_size_list(col.type):
        return col.type.list_size
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise NlakitError(f"activation_vector has type {col.type}; expected a list of floats")
    lengths = pa.compute.list_value_length(col)
    lo, hi = pa.compute.min(lengths).as_py(), pa.compute.max(lengths).as_py()
    if lo != hi:
        raise NlakitError(f"activation_vector rows have different lengths ({lo}..{hi}); every vector needs the same d")
    return int(lo or 0)


def vectors_of(table: pa.Table) -> np.ndarray:
    """The `activation_vector` column as a [n, d] float32 array, read chunk by chunk (no 2^31 offset overflow).
    FixedSizeList<float32> as nlakit writes it, or list<float|double> (variable-size lists of one length)."""
    col = table.column("activation_vector")
    d = vector_dim(table)
    chunks = []
    for c in col.chunks:
        if c.null_count:
            raise NlakitError("activation_vector has null rows; drop them before reading")
        chunks.append(c.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, d))
    return np.concatenate(chunks) if chunks else np.zeros((0, d), np.float32)


def load(path: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, DatasetMeta]:
    """Rows and sidecar, checking that they agree on d_model."""
    meta = read_dataset_meta(path)
    table = read_table(path, columns)
    if "activation_vector" in table.column_names:
        d = vector_dim(table)
        if d != meta.extraction.d_model:
            raise NlakitError(f"{path}: vectors have d={d} but the sidecar says d_model={meta.extraction.d_model}")
    return table, meta


def split_doc_ids(doc_ids: list[str], fractions: dict[str, float], seed: int) -> dict[str, set[str]]:
    """Document-level split: sorted unique ids shuffled by `Random(seed)`, then cut by the fractions in order."""
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise NlakitError(f"split fractions {fractions} must be non-negative and sum to 1")
    ids = sorted(set(doc_ids))
    random.Random(seed).shuffle(ids)
    out, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        end = len(ids) if i == len(names) - 1 else start + round(fractions[name] * len(ids))
        out[name] = set(ids[start:end])
        start = end
    return out


def combine(srcs: list[str | Path]) -> tuple[pa.Table, DatasetMeta]:
    """Rows of several datasets of the same target, layer and width (e.g. registers extracted separately), as one.
    Columns are those every source has; document ids must not repeat across sources."""
    loaded = [load(s) for s in srcs]
    if len(loaded) == 1:
        return loaded[0]
    first = loaded[0][1].extraction
    for src, (_, meta) in zip(srcs, loaded, strict=True):
        ext = meta.extraction
        if (ext.base_model, ext.layer_index, ext.d_model) != (first.base_model, first.layer_index, first.d_model):
            raise NlakitError(
                f"{src} holds {ext.base_model} layer {ext.layer_index} (d={ext.d_model}), unlike {srcs[0]} "
                f"({first.base_model} layer {first.layer_index}, d={first.d_model}); combine one target and layer"
            )
    shared = [c for c in loaded[0][0].column_names if all(c in t.column_names for t, _ in loaded)]
    seen: dict[str, str] = {}
    for src, (table, _) in zip(srcs, loaded, strict=True):
        for doc in set(table.column("doc_id").to_pylist()):
            if doc in seen:
                raise NlakitError(f"document {doc!r} is in both {seen[doc]} and {src}; their ids must differ")
            seen[doc] = str(src)
    table = pa.concat_tables([t.select(shared) for t, _ in loaded])
    rows = [t.num_rows for t, _ in loaded]
    norms = [m.extraction.mean_norm for _, m in loaded]
    mean_norm = (
        round(sum(n * r for n, r in zip(norms, rows, strict=True)) / sum(rows), 4) if None not in norms else None
    )
    corpus = "+".join(str(m.extraction.corpus) for _, m in loaded)
    meta = replace(
        loaded[0][1],
        extraction=replace(first, corpus=corpus, corpus_slice={"start": 0, "length": None}, mean_norm=mean_norm),
        dataset_id="+".join(m.dataset_id for _, m in loaded),
        parent_datasets=[m.dataset_id for _, m in loaded],
    )
    return table, meta


def split(
    src: str | Path | list[str | Path], out: str | Path, fractions: dict[str, float], seed: int = 42
) -> dict[str, int]:
    """Write `out/<name>/` datasets (parquet + sidecar) by document; returns row counts per split. Several sources
    are split together (`combine`), so every register is cut by document in the same proportions."""
    table, meta = combine(src if isinstance(src, list) else [src])
    groups = split_doc_ids(table.column("doc_id").to_pylist(), fractions, seed)
    counts = {}
    doc_col = table.column("doc_id")
    for name, ids in groups.items():
        mask = pa.compute.is_in(doc_col, value_set=pa.array(sorted(ids), type=doc_col.type))
        part = table.filter(mask)
        dest = Path(out) / name
        for stale in dest.glob(PART_GLOB):
            stale.unlink()
        write_parquet(dest / part_name(0), part)
        sub = replace(
            meta,
            row_count=part.num_rows,
            dataset_id=f"{meta.dataset_id}__{name}",
            parent_datasets=meta.parent_datasets or [meta.dataset_id],
            created_at="",
        )
        write_dataset_meta(dest, sub)
        counts[name] = part.num_rows
    return counts


@dataclass
class Pairs:
    vectors: torch.Tensor  # [n, d] raw activations
    texts: list[str]
    meta: DatasetMeta


def load_pairs(path: str | Path, column: str, max_rows: int | None = None) -> Pairs:
    """Vectors and the non-empty texts of `column` (an explanation, or `context` for RL), in dataset order."""
    table, meta = load(path, ["activation_vector", column])
    if column not in table.column_names:
        raise NlakitError(f"{path} has no {column!r} column; run `nla datagen` on it first")
    texts = table.column(column).to_pylist()
    vectors = torch.from_numpy(vectors_of(table))
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    if not keep:
        raise NlakitError(f"{path} has no non-empty {column!r} rows")
    keep = keep[:max_rows] if max_rows else keep
    return Pairs(vectors[keep], [texts[i] for i in keep], meta)
