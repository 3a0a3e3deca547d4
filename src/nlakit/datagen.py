"""`nla datagen`: add an `explanation` column to an activations dataset with any explainer.

Rows are processed in fixed chunks; each chunk becomes one parquet part written atomically, so an interrupted run
resumes at the first missing part. Inside a chunk, explanations are stored as they are made in a SQLite cache keyed
by sha256(provider settings | context), so paid API calls are never repeated, across runs or datasets that share
contexts. Rows an explainer drops (None) are left out and counted in the sidecar.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from nlakit import dataset as ds
from nlakit.errors import NlakitError
from nlakit.explainers.base import Explainer
from nlakit.io import atomic_write_text
from nlakit.meta import write_dataset_meta
from nlakit.progress import progress_bar

CACHE_NAME = "explanations.sqlite"


class ExplanationCache:
    """context hash -> explanation (NULL = the explainer dropped it), per provider settings."""

    def __init__(self, path: Path, settings: dict):
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, explanation TEXT)")
        self.salt = json.dumps(settings, sort_keys=True)

    def key(self, context: str) -> str:
        return hashlib.sha256(f"{self.salt}|{context}".encode()).hexdigest()

    def get_many(self, contexts: list[str]) -> dict[str, str | None]:
        keys = {self.key(c): c for c in contexts}
        found: dict[str, str | None] = {}
        items = list(keys)
        for b in range(0, len(items), 500):
            part = items[b : b + 500]
            rows = self.db.execute(
                f"SELECT key, explanation FROM cache WHERE key IN ({','.join('?' * len(part))})", part
            )
            for k, e in rows:
                found[keys[k]] = e
        return found

    def put_many(self, pairs: list[tuple[str, str | None]]) -> None:
        with self.db:  # one transaction: committed together or not at all
            self.db.executemany("INSERT OR REPLACE INTO cache VALUES (?, ?)", [(self.key(c), e) for c, e in pairs])


@dataclass
class DatagenResult:
    rows: int
    dropped: int
    seconds: float
    explained_now: int

    @property
    def rows_per_s(self) -> float:
        return self.explained_now / self.seconds if self.seconds else 0.0


def datagen(
    src: str | Path,
    out: str | Path,
    explainer: Explainer,
    *,
    chunk_rows: int = 512,
    flush_rows: int = 64,
    max_rows: int | None = None,
    sample_seed: int | None = None,
) -> DatagenResult:
    """Add an `explanation` column to an activations dataset, in resumable parts. `max_rows`: the first N rows, or
    with `sample_seed` a seeded sample of N rows from the whole source, kept in source order (a source in corpus
    order holds its registers in runs, so its first rows can all be one register)."""
    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise NlakitError("--out must differ from the source dataset (the source is never modified)")
    table, meta = ds.load(src)
    if "context" not in table.column_names:
        raise NlakitError(f"{src} has no 'context' column; it must come from `nla extract`")
    if sample_seed is not None and not max_rows:
        raise NlakitError("--sample-seed picks --max-rows rows; give --max-rows N as well")
    sample = None
    if max_rows and max_rows < table.num_rows:
        if sample_seed is None:
            table = table.slice(0, max_rows)
        else:
            rows = np.sort(np.random.default_rng(sample_seed).choice(table.num_rows, max_rows, replace=False))
            table = table.take(pa.array(rows))
            # the rows themselves, hashed: a resume under another NumPy (another stream for the seed) is refused
            sample = {"seed": sample_seed, "rows_sha256": hashlib.sha256(rows.astype("<i8").tobytes()).hexdigest()}
    out.mkdir(parents=True, exist_ok=True)
    ds.remove_stale_temps(out)
    # parts are only reusable by a run with the same source, slicing and explainer
    manifest = {
        "source": meta.dataset_id,
        "source_rows": table.num_rows,
        "chunk_rows": chunk_rows,
        "explainer": explainer.settings(),
        # only for a sample, so parts written before the option existed stay reusable
        **({"sample": sample} if sample else {}),
    }
    manifest_path = out / "datagen_manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) != manifest:
        raise NlakitError(
            f"{out} was made with other settings (source, --max-rows, --sample-seed or explainer); use a new --out"
        )
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    cache = ExplanationCache(out / CACHE_NAME, explainer.settings())
    n_chunks = (table.num_rows + chunk_rows - 1) // chunk_rows
    todo = [c for c in range(n_chunks) if not (out / ds.part_name(c)).is_file()]
    t0, made = time.perf_counter(), 0
    with progress_bar(
        f"datagen {explainer.name}", total=table.num_rows, completed=(n_chunks - len(todo)) * chunk_rows
    ) as bar:
        for c in todo:
            chunk = table.slice(c * chunk_rows, chunk_rows)
            contexts = chunk.column("context").to_pylist()
            known = cache.get_many(contexts)
            bar.advance(len([x for x in contexts if x in known]))
            missing = list(dict.fromkeys(x for x in contexts if x not in known))
            # an explainer that reads activations (an NLA's AV) gets each context's vector: one context, one vector
            vectors = ds.vectors_of(chunk) if getattr(explainer, "reads_vectors", False) else None
            row_of = {x: i for i, x in reversed(list(enumerate(contexts)))}
            for b in range(0, len(missing), flush_rows):
                part = missing[b : b + flush_rows]
                extra = {"vectors": vectors[[row_of[x] for x in part]]} if vectors is not None else {}
                results = explainer.explain(part, progress=bar.advance, **extra)
                cache.put_many(list(zip(part, results, strict=True)))
                known.update(zip(part, results, strict=True))
                made += len(part)
            explanations = [known[x] for x in contexts]
            keep = pa.array([e is not None for e in explanations])
            if "explanation" in chunk.column_names:  # re-explained by another provider: the new text replaces it
                chunk = chunk.drop_columns(["explanation"])
            kept = chunk.append_column("explanation", pa.array(explanations, pa.string())).filter(keep)
            ds.write_parquet(out / ds.part_name(c), kept)
    seconds = time.perf_counter() - t0

    total = ds.read_table(out, ["doc_id"]).num_rows
    dropped = table.num_rows - total
    summary = {**explainer.settings(), "stats": dict(explainer.stats), "dropped_rows": dropped}
    if sample:
        summary["sample"] = sample
    write_dataset_meta(
        out,
        replace(
            meta,
            stage="explained",
            row_count=total,
            api_summaries=summary,
            dataset_id=f"{meta.dataset_id}__explained",
            parent_datasets=[meta.dataset_id],
            created_at="",
        ),
    )
    return DatagenResult(total, dropped, seconds, made)
