"""How much of the vector a teacher format can carry, measured cheaply: a ridge regression from the explanation's
hashed word and word-pair counts to the normalised activation, fit on one set of documents and scored (fve_nrm) on
others. A bag-of-words reader is weaker than the AR, but it ranks formats by the lexical content they carry in
seconds instead of an AR SFT run per format. The decision each ablation supports is confirmed by the AR's own curve.

    python scripts/teacher_proxy.py runs/v2/acts_wiki --rows 2400 --out recipes/smollm2-L20/logs/teacher_proxy.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import zlib
from pathlib import Path

import torch

from nlakit import dataset as ds
from nlakit.explainers import grounded as g
from nlakit.maths import fve_nrm, mse_nrm, normalize, rawvar_baseline

DIM = 1 << 15


def features(texts: list[str]) -> torch.Tensor:
    """Hashed counts of lower-cased words and adjacent word pairs, log-scaled, rows at unit norm."""
    x = torch.zeros(len(texts), DIM)
    for i, t in enumerate(texts):
        words = re.findall(r"\w+|[^\w\s]", t.lower())
        for f in words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]:
            x[i, zlib.crc32(f.encode()) % DIM] += 1
    x = torch.log1p(x)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)


def ridge_fve(train_x, train_y, test_x, test_y, lam: float) -> float:
    """Kernel (dual) ridge: n x n instead of DIM x DIM."""
    k = train_x @ train_x.T
    alpha = torch.linalg.solve(k + lam * torch.eye(len(k)), train_y - train_y.mean(0))
    pred = test_x @ train_x.T @ alpha + train_y.mean(0)
    mse = float(mse_nrm(pred, test_y).mean())
    return float(fve_nrm(mse, rawvar_baseline(train_y)))


def variant(ex: g.GroundedExplainer, ctx: str, preds: list[int], *, quote: int, top_k: int, topic: bool) -> str:
    lines = ex.compose(ctx, preds[:top_k]).split("\n")
    if quote != g.QUOTE_WORDS:
        lines[1] = 'Recent words: "' + " ".join(g.plain_text(ctx).split()[-quote:]) + '".'
    return "\n".join(lines if topic else lines[1:])


def previous_teacher():
    """The v1 grounded explainer (64 seeded templates, 4-7 quoted words, top-3), from git, for the comparison."""
    import subprocess
    import types

    src = subprocess.run(
        ["git", "show", "b59fa06:src/nlakit/explainers/grounded.py"], capture_output=True, text=True, check=True
    ).stdout
    mod = types.ModuleType("grounded_v1")
    exec(compile(src, "grounded_v1.py", "exec"), mod.__dict__)
    return mod.GroundedExplainer("smollm2-135m", dtype="float32")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--rows", type=int, default=2400)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    table = ds.read_table(args.data)
    n = min(args.rows, table.num_rows)
    contexts = table.column("context").to_pylist()[:n]
    docs = table.column("doc_id").to_pylist()[:n]
    y = normalize(
        torch.from_numpy(ds.vectors_of(table)[:n]), math.sqrt(table.column("activation_vector").type.list_size)
    )
    ex = g.GroundedExplainer("smollm2-135m", top_k=8, dtype="float32")
    preds = ex.top_predictions(contexts)
    # document-level split: the last fifth of the documents are the test set
    cut = sorted(set(docs))[int(0.8 * len(set(docs)))]
    tr = [i for i, d in enumerate(docs) if d < cut]
    te = [i for i, d in enumerate(docs) if d >= cut]
    variants = {
        "v2 (shipped: 6 quoted words, top-4, topic line)": dict(quote=6, top_k=4, topic=True),
        "v2, no topic line": dict(quote=6, top_k=4, topic=False),
        "v2, 3 quoted words": dict(quote=3, top_k=4, topic=True),
        "v2, 10 quoted words": dict(quote=10, top_k=4, topic=True),
        "v2, top-2 predictions": dict(quote=6, top_k=2, topic=True),
        "v2, top-8 predictions": dict(quote=6, top_k=8, topic=True),
    }
    results = {}
    v1 = previous_teacher()
    runs = {"v1 (previous)": [v1.compose(c, p[:3]) for c, p in zip(contexts, preds, strict=True)]}
    for name, kw in variants.items():
        runs[name] = [variant(ex, c, p, **kw) for c, p in zip(contexts, preds, strict=True)]
    for name, texts in runs.items():
        x = features(texts)
        tokens = sum(len(ex.tok(t)["input_ids"]) for t in texts) / len(texts)
        fve = max(ridge_fve(x[tr], y[tr], x[te], y[te], lam) for lam in (0.1, 0.3, 1.0))
        results[name] = {"proxy_fve_nrm": round(fve, 4), "tokens_mean": round(tokens, 1)}
        print(f"{name:55s} proxy fve {fve:.3f}  tokens {tokens:.1f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": n, "train": len(tr), "test": len(te), "results": results}, indent=1))


if __name__ == "__main__":
    main()
