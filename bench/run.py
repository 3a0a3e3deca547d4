"""All benchmarks, one command: `make bench` (or `python bench/run.py [--quick]`). Prints Markdown for BENCHMARKS.md
and writes bench/results.json. Every figure is a median of repeated runs, with its baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from bench.common import HERE, gemm_peak_gflops, run_isolated  # noqa: E402


def extraction(args) -> list[str]:
    kw = dict(model=args.model, layer=args.layer, n_docs=args.docs, dtype=args.dtype, batch_size=16, max_tokens=256)
    base, ours = [], []
    for _ in range(args.repeats):  # interleave so drift hits both equally
        base.append(run_isolated("bench_extract", "bare_forward", **kw))
        ours.append(run_isolated("bench_extract", "nlakit_extract", **kw))
    b = statistics.median(r["tok_s"] for r in base)
    o = statistics.median(r["tok_s"] for r in ours)
    ol = statistics.median(r["tok_s_with_load"] for r in ours)
    peak = gemm_peak_gflops(args.gemm_dtype)
    gflop_per_tok = base[0]["gflop"] / base[0]["tokens"]
    RESULTS["extraction"] = {
        "baseline_tok_s": b,
        "nlakit_tok_s": o,
        "ratio": o / b,
        "runs": {"base": base, "ours": ours},
        "gemm_peak_gflops": peak,
    }
    return [
        f"### Extraction ({args.model}, layer {args.layer}, {args.docs} wiki docs, {args.dtype}, batch 16, "
        f"median of {args.repeats})",
        "",
        "| path | tokens/s | ratio | peak RSS (MB) | fraction of GEMM peak |",
        "|---|---|---|---|---|",
        f"| bare forward of blocks 0..{args.layer} (baseline) | {b:.0f} | 1.00 | "
        f"{statistics.median(r['peak_rss_mb'] for r in base):.0f} | {b * gflop_per_tok / peak:.0%} |",
        f"| `nlakit.extract` (tokenise, forward, gather, decode, parquet) | {o:.0f} | **{o / b:.2f}x** | "
        f"{statistics.median(r['peak_rss_mb'] for r in ours):.0f} | {o * gflop_per_tok / peak:.0%} |",
        f"| `nlakit.extract` including its one-time model load | {ol:.0f} | {ol / b:.2f}x | | |",
        "",
        f"{args.gemm_dtype} GEMM peak measured in the same run: {peak:.0f} GFLOP/s (2048x2048 matmul).",
        "",
    ]


RESULTS: dict = {}
SECTIONS = {"extract": extraction}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=sorted(SECTIONS), action="append")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=20)
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--gemm-dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    lines = []
    for name in args.only or list(SECTIONS):
        lines += SECTIONS[name](args)
    print("\n".join(lines))
    out = HERE / "results.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update(RESULTS)
    out.write_text(json.dumps(old, indent=1))


if __name__ == "__main__":
    main()
