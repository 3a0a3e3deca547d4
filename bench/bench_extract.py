"""Extraction throughput: `nlakit.extract` end to end (tokenise, forward, gather, decode, parquet) against a bare
forward of the same blocks 0..K over the same token batches, in the same dtype."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def _docs(n_docs: int):
    from nlakit.corpus import load_corpus

    return load_corpus("wiki", max_docs=n_docs)


def bare_forward(model: str, layer: int, n_docs: int, dtype: str, batch_size: int, max_tokens: int) -> dict:
    import torch

    from nlakit.models import load_backbone, load_tokenizer

    tok = load_tokenizer(model)
    net = load_backbone(model, num_layers=layer + 1, dtype=dtype)
    ids = [tok(d.text, truncation=True, max_length=max_tokens)["input_ids"] for d in _docs(n_docs)]
    ids.sort(key=len)
    batches = []
    for b in range(0, len(ids), batch_size):
        group = ids[b : b + batch_size]
        width = max(map(len, group))
        x = torch.full((len(group), width), tok.pad_token_id)
        m = torch.zeros_like(x)
        for i, row in enumerate(group):
            x[i, : len(row)] = torch.tensor(row)
            m[i, : len(row)] = 1
        batches.append((x, m))
    n_tokens = sum(map(len, ids))
    with torch.inference_mode():
        net(input_ids=batches[0][0], attention_mask=batches[0][1])  # warm-up
        t = time.perf_counter()
        for x, m in batches:
            net(input_ids=x, attention_mask=m, use_cache=False)
        dt = time.perf_counter() - t
    params = sum(p.numel() for n_, p in net.named_parameters() if "embed" not in n_)
    return {"seconds": dt, "tokens": n_tokens, "tok_s": n_tokens / dt, "gflop": 2 * params * n_tokens / 1e9}


def nlakit_extract(model: str, layer: int, n_docs: int, dtype: str, batch_size: int, max_tokens: int) -> dict:
    from nlakit.corpus import load_corpus
    from nlakit.extract import ExtractConfig, extract
    from nlakit.models import load_backbone, load_tokenizer

    tok = load_tokenizer(model)
    load_backbone(model, num_layers=layer + 1, dtype=dtype)  # warm the page cache like the baseline's load
    n_tokens = sum(
        len(tok(d.text, truncation=True, max_length=max_tokens)["input_ids"])
        for d in load_corpus("wiki", max_docs=n_docs)
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ExtractConfig(
            model=model,
            layers=[layer],
            corpus="wiki",
            out=Path(tmp) / "x",
            positions_per_doc=5,
            max_docs=n_docs,
            dtype=dtype,
            batch_size=batch_size,
            max_tokens=max_tokens,
        )
        t = time.perf_counter()
        res = extract(cfg)
        total = time.perf_counter() - t
    assert res.tokens == n_tokens
    return {
        "seconds": res.seconds,
        "tokens": n_tokens,
        "tok_s": res.tokens_per_s,
        "rows": res.rows[layer],
        "seconds_with_load": total,
        "tok_s_with_load": n_tokens / total,
    }


def grounded_datagen(src: str, rows: int = 512) -> dict:
    """rows/s of `nla datagen --provider grounded` on SmolLM2 layer-20 rows (one full-model forward per document
    group, LM head only where read)."""
    from nlakit.datagen import datagen
    from nlakit.explainers import GroundedExplainer

    with tempfile.TemporaryDirectory() as tmp:
        exp = GroundedExplainer("smollm2-135m")
        _ = exp.model  # load outside the timed region
        res = datagen(src, Path(tmp) / "ex", exp, max_rows=rows)
    return {"rows_s": res.rows_per_s, "rows": res.explained_now, "seconds": res.seconds}
