"""Residual-stream capture to disk.

"Layer K" is the residual stream *after* decoder block K (post-MLP, post-residual add), which is Hugging Face
`hidden_states[K + 1]` (index 0 is the embedding output). Only blocks 0..max(K) are loaded and run; a forward hook on
each requested block reads its output, so several layers come out of one pass (a layer sweep).

Positions are sampled per document with `random.Random(sha256(f"{seed}|{doc_id}"))`, so rows do not depend on batching,
chunking or sharding. Documents are processed in fixed chunks; each chunk is one parquet part written atomically, so
an interrupted run resumes at the first missing part with no lost or duplicated rows.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from nlakit import dataset as ds
from nlakit.batch import right_pad
from nlakit.config import ExtractConfig
from nlakit.corpus import Document, load_corpus
from nlakit.errors import NlakitError
from nlakit.maths import keyed_seed
from nlakit.meta import (
    DatasetMeta,
    Extraction,
    dataset_id,
    read_dataset_meta,
    sidecar_path,
    write_dataset_meta,
)
from nlakit.models import decoder_layers, load_backbone, load_tokenizer, model_info, resolve_dtype
from nlakit.progress import progress_bar

# Position 0 carries an attention sink (~100x the usual norm on SmolLM2), and very early positions decode toward the
# prior; 16 keeps most of a short corpus (wiki: median 98 tokens) usable. The reference uses 50 on long web text.


def doc_rng(seed: int, doc_id: str) -> random.Random:
    return random.Random(keyed_seed(seed, doc_id))


def sample_positions(
    token_ids: list[int],
    doc_id: str,
    *,
    seed: int,
    n: int,
    min_position: int,
    special_ids: frozenset[int] = frozenset(),
) -> list[int]:
    """Up to `n` distinct positions >= max(1, min_position) that are not special tokens, sorted; keyed by document."""
    lo = max(1, min_position)
    candidates = [i for i in range(lo, len(token_ids)) if token_ids[i] not in special_ids]
    k = min(n, len(candidates))
    return sorted(doc_rng(seed, doc_id).sample(candidates, k)) if k else []


class LayerCapture:
    """Forward hooks that keep the output of the given decoder blocks (the residual stream after each)."""

    def __init__(self, model, layers: list[int]):
        blocks = decoder_layers(model)
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles = [blocks[k].register_forward_hook(self._hook(k)) for k in layers]

    def _hook(self, k: int):
        def hook(_module, _inputs, output):
            self.outputs[k] = output[0] if isinstance(output, tuple) else output

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def __enter__(self) -> LayerCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()  # hooks left on a model would keep capturing in every later forward


def _fingerprint(cfg: ExtractConfig, layer: int, d_model: int) -> Extraction:
    return Extraction(
        base_model=cfg.model,
        d_model=d_model,
        layer_index=layer,
        corpus=cfg.corpus,
        corpus_slice={"start": 0, "length": cfg.max_docs},  # as the sidecar stores it (length None: every document)
        positions_per_doc=cfg.positions_per_doc,
        min_position=cfg.min_position,
        max_tokens=cfg.max_tokens,
        seed=cfg.seed,
        dtype=str(resolve_dtype(cfg.dtype, cfg.device)).removeprefix("torch."),
    )


def _same_run(old: Extraction, new: Extraction) -> bool:
    keys = (
        "base_model",
        "d_model",
        "layer_index",
        "corpus",
        "corpus_slice",
        "positions_per_doc",
        "min_position",
        "max_tokens",
        "seed",
        "dtype",
    )
    a, b = asdict(old), asdict(new)
    return all(a.get(k) == b.get(k) for k in keys)


def _prepare_outputs(cfg: ExtractConfig, d_model: int) -> dict[int, DatasetMeta]:
    metas = {}
    for layer in cfg.layers:
        out = cfg.layer_dir(layer)
        ext = _fingerprint(cfg, layer, d_model)
        if sidecar_path(out).is_file():
            old = read_dataset_meta(out)
            if not _same_run(old.extraction, ext):
                raise NlakitError(
                    f"{out} holds an extraction with other settings; pass a new --out or the same options"
                )
        meta = DatasetMeta(
            extraction=ext,
            dataset_id=dataset_id(cfg.model, layer, cfg.corpus, cfg.seed, cfg.positions_per_doc, cfg.min_position),
        )
        write_dataset_meta(out, meta)  # written first: a resumed run checks its settings against it
        metas[layer] = meta
        ds.remove_stale_temps(out)
    return metas


def _check_layers(layers: list[int], num_layers: int, model: str) -> None:
    if not layers:
        raise NlakitError("no layer given; pass --layer K (or several, comma-separated)")
    bad = [k for k in layers if not 0 <= k < num_layers]
    if bad:
        raise NlakitError(
            f"layer {bad[0]} is out of range for {model}: it has {num_layers} blocks, so K is 0..{num_layers - 1}"
        )


@torch.inference_mode()
def run_chunk(
    model,
    capture: LayerCapture,
    items: list[tuple[Document, list[int], list[int]]],
    tok,
    layers: list[int],
    batch_size: int,
    device: str,
) -> dict[int, tuple[np.ndarray, dict[str, list]]]:
    """Forward the chunk's documents (batched by length) and gather the sampled positions, in document order."""
    pad = tok.pad_token_id
    gathered: dict[int, dict[int, np.ndarray]] = {k: {} for k in layers}
    # a causal model never looks ahead: tokens after a document's last sampled position are not forwarded
    needed = [max(pos) + 1 if pos else 0 for _, _, pos in items]
    order = sorted(range(len(items)), key=lambda i: needed[i])
    for b in range(0, len(order), batch_size):
        idx = [i for i in order[b : b + batch_size] if items[i][2]]
        if not idx:
            continue
        ids, mask = right_pad([items[i][1][: needed[i]] for i in idx], pad)
        model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        for k in layers:
            h = capture.outputs[k]
            for row, i in enumerate(idx):
                gathered[k][i] = h[row, items[i][2]].float().cpu().numpy()
    results = {}
    for k in layers:
        vecs, cols = [], {"doc_id": [], "position": [], "token": [], "context": [], "layer": []}
        for i, (doc, ids_i, positions) in enumerate(items):
            if not positions:
                continue
            vecs.append(gathered[k][i])
            for p in positions:
                cols["doc_id"].append(doc.id)
                cols["position"].append(p)
                cols["token"].append(tok.decode([ids_i[p]]))
                cols["context"].append(tok.decode(ids_i[: p + 1], skip_special_tokens=True))
                cols["layer"].append(k)
        results[k] = (np.concatenate(vecs) if vecs else np.zeros((0, model.config.hidden_size), np.float32), cols)
    return results


@dataclass
class ExtractResult:
    rows: dict[int, int]  # rows written per layer (all parts, resumed ones included)
    tokens: int  # tokens forwarded in this call
    seconds: float  # wall time of this call's chunk loop (tokenise, forward, gather, decode, write)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def extract(cfg: ExtractConfig) -> ExtractResult:
    """Run (or resume) an extraction."""
    info = model_info(cfg.model)
    _check_layers(cfg.layers, info.num_layers, cfg.model)
    if cfg.positions_per_doc < 1:
        raise NlakitError("--positions-per-doc must be at least 1")
    docs = load_corpus(cfg.corpus, cfg.max_docs)
    tok = load_tokenizer(cfg.model)
    metas = _prepare_outputs(cfg, info.d_model)
    special = frozenset(tok.all_special_ids)

    n_chunks = (len(docs) + cfg.chunk_docs - 1) // cfg.chunk_docs
    todo = [c for c in range(n_chunks) if not all((cfg.layer_dir(k) / ds.part_name(c)).is_file() for k in cfg.layers)]
    n_tokens, t0 = 0, time.perf_counter()
    if todo:
        model = load_backbone(cfg.model, num_layers=max(cfg.layers) + 1, device=cfg.device, dtype=cfg.dtype)
        with LayerCapture(model, cfg.layers) as capture:
            t0 = time.perf_counter()  # throughput excludes the one-time model load
            with progress_bar("extract", total=len(docs), completed=(n_chunks - len(todo)) * cfg.chunk_docs) as bar:
                for c in todo:
                    chunk = docs[c * cfg.chunk_docs : (c + 1) * cfg.chunk_docs]
                    items = []
                    for doc in chunk:
                        ids = tok(doc.text, add_special_tokens=True, truncation=True, max_length=cfg.max_tokens)[
                            "input_ids"
                        ]
                        pos = sample_positions(
                            ids,
                            doc.id,
                            seed=cfg.seed,
                            n=cfg.positions_per_doc,
                            min_position=cfg.min_position,
                            special_ids=special,
                        )
                        items.append((doc, ids, pos))
                        n_tokens += max(pos) + 1 if pos else 0  # tokens forwarded
                    results = run_chunk(model, capture, items, tok, cfg.layers, cfg.batch_size, cfg.device)
                    for k, (vecs, cols) in results.items():
                        ds.write_parquet(cfg.layer_dir(k) / ds.part_name(c), ds.make_table(vecs, cols))
                    bar.advance(len(chunk))
    seconds = time.perf_counter() - t0

    counts = {}
    for k in cfg.layers:
        table = ds.read_table(cfg.layer_dir(k), ["activation_vector"])
        vecs = ds.vectors_of(table)
        if len(vecs) == 0:
            raise NlakitError(
                f"no positions were sampled: every document is shorter than --min-position {cfg.min_position}"
                "; lower --min-position or use longer documents"
            )
        meta = metas[k]
        meta.row_count = len(vecs)
        meta.extraction.mean_norm = round(float(np.linalg.norm(vecs, axis=1).mean()), 4)
        write_dataset_meta(cfg.layer_dir(k), meta)
        counts[k] = len(vecs)
    return ExtractResult(counts, n_tokens, seconds)
