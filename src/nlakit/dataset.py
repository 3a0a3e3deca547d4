"""Activation datasets on disk: a folder of parquet parts plus `nla_meta.yaml`.

Columns: `activation_vector` (FixedSizeList<float32>[d], raw, never normalised), `doc_id`, `position`, `token`,
`context` (text up to and including the token), `layer`; later stages add e.g. `explanation`.
A single reference-style parquet (columns `detokenized_text_truncated`, `activation_layer`, `n_raw_tokens`) reads too.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nlakit.errors import NlakitError
from nlakit.io import atomic_write
from nlakit.meta import DatasetMeta, read_dataset_meta, write_dataset_meta

PART_GLOB = "part-*.parquet"
_REFERENCE_NAMES = {"detokenized_text_truncated": "context", "activation_layer": "layer"}


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def vector_type(d: int) -> pa.DataType:
    return pa.list_(pa.float32(), d)


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


def _read_one(path: Path, columns: list[str] | None) -> pa.Table:
    try:
        schema_names = pq.read_schema(path).names
        cols = None
        if columns is not None:
            inverse = {v: k for k, v in _REFERENCE_NAMES.items()}
            cols = [c if c in schema_names else inverse.get(c, c) for c in columns]
        table = pq.read_table(path, columns=cols)
    except (pa.ArrowInvalid, OSError) as e:
        raise NlakitError(
            f"{path} is not a readable parquet file ({str(e).splitlines()[0][:120]}); "
            "delete it and re-run the step that wrote it (it resumes)"
        ) from None
    except KeyError as e:
        raise NlakitError(f"{path} lacks column {e}; is it an nlakit activations dataset?") from None
    names = [_REFERENCE_NAMES.get(n, n) for n in table.column_names]
    table = table.rename_columns(names)
    if "position" not in names and "n_raw_tokens" in names and (columns is None or "position" in columns):
        table = table.append_column("position", pa.compute.subtract(table.column("n_raw_tokens"), 1))
    return table


def part_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise NlakitError(f"dataset {path} does not exist; run `nla extract` first")
    parts = sorted(path.glob(PART_GLOB))
    if not parts:
        raise NlakitError(f"dataset {path} has no {PART_GLOB} files; run `nla extract --out {path}` (it resumes)")
    return parts


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All rows of a dataset folder (parts in order) or a single parquet file."""
    tables = [_read_one(p, columns) for p in part_files(path)]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def vectors_of(table: pa.Table) -> np.ndarray:
    """The `activation_vector` column as a [n, d] float32 array, read batch by batch (no 2^31 offset overflow)."""
    col = table.column("activation_vector")
    if not pa.types.is_fixed_size_list(col.type):
        raise NlakitError("activation_vector must be FixedSizeList<float32>[d]; re-extract or cast the dataset")
    d = col.type.list_size
    chunks = [c.flatten().to_numpy(zero_copy_only=False).reshape(-1, d) for c in col.chunks]
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros((0, d), np.float32)


def load(path: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, DatasetMeta]:
    """Rows and sidecar, checking that they agree on d_model."""
    meta = read_dataset_meta(path)
    table = read_table(path, columns)
    if "activation_vector" in table.column_names:
        d = table.column("activation_vector").type.list_size
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


def split(src: str | Path, out: str | Path, fractions: dict[str, float], seed: int = 42) -> dict[str, int]:
    """Write `out/<name>/` datasets (parquet + sidecar) by document; returns row counts per split."""
    table, meta = load(src)
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
            parent_datasets=[meta.dataset_id],
            created_at="",
        )
        write_dataset_meta(dest, sub)
        counts[name] = part.num_rows
    return counts
