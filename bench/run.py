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
from bench.process_time import cpu_name  # noqa: E402


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


def _pair(module: str, func: str, repeats: int, **kw) -> tuple[list[dict], list[dict]]:
    base, ours = [], []
    for _ in range(repeats):  # interleaved, each in a fresh process
        base.append(run_isolated(module, func, mode="baseline", **kw))
        ours.append(run_isolated(module, func, mode="nlakit", **kw))
    return base, ours


def _rows(
    name_base: str,
    name_ours: str,
    base: list[dict],
    ours: list[dict],
    peak: float | None = None,
    gflop_per_tok: float | None = None,
) -> list[str]:
    b = statistics.median(r["tok_s"] for r in base)
    o = statistics.median(r["tok_s"] for r in ours)
    frac = (lambda x: f"{x * gflop_per_tok / peak:.0%}") if peak and gflop_per_tok else (lambda x: "")
    return [
        "| path | tokens/s | ratio | peak RSS (MB) | fraction of GEMM peak |",
        "|---|---|---|---|---|",
        f"| {name_base} (baseline) | {b:.0f} | 1.00 | {statistics.median(r['peak_rss_mb'] for r in base):.0f} "
        f"| {frac(b)} |",
        f"| {name_ours} | {o:.0f} | **{o / b:.2f}x** | {statistics.median(r['peak_rss_mb'] for r in ours):.0f} "
        f"| {frac(o)} |",
        "",
    ]


def ar_training(args) -> list[str]:
    base, ours = _pair("bench_nla", "ar_train_step", args.repeats)
    RESULTS["ar_train"] = {"base": base, "ours": ours}
    # fwd+bwd of 21 SmolLM2 blocks: ~6 FLOPs per parameter per token (LoRA adds little)
    peak = gemm_peak_gflops(args.gemm_dtype)
    gflop_per_tok = 6 * 21 * 3.54e6 / 1e9
    return [
        f"### AR training step (SmolLM2 blocks 0..20, LoRA r=16, bf16 autocast, batch 8, median of {args.repeats})",
        "",
        *_rows(
            "plain HF backbone + MSE on pre-tokenised batch",
            "`AR.loss` (tokenise + forward) + step",
            base,
            ours,
            peak,
            gflop_per_tok,
        ),
    ]


def av_generation(args) -> list[str]:
    base, ours = _pair("bench_nla", "av_generate", args.repeats)
    peak = gemm_peak_gflops(args.gemm_dtype)
    RESULTS["av_generate"] = {"base": base, "ours": ours, "gemm_peak_gflops": peak}
    return [
        f"### AV generation (SmolLM2, bf16, batch 32, 64 new tokens, sampling, median of {args.repeats})",
        "",
        *_rows(
            "HF `generate` from `input_ids`",
            "`AV.generate_ids` (injected `inputs_embeds`)",
            base,
            ours,
            peak,
            ours[0]["gflop_per_token"],
        ),
        f"{args.gemm_dtype} GEMM peak measured in the same run: {peak:.0f} GFLOP/s; decode FLOPs "
        f"{ours[0]['gflop_per_token']:.3f} GFLOP per token.",
        "",
    ]


def explain_latency(args) -> list[str]:
    nla_dir = str(HERE / ".cache" / "base_nla")
    base, ours = [], []
    for _ in range(args.repeats):
        base.append(run_isolated("bench_nla", "explain_latency", mode="baseline", nla_dir=nla_dir))
        ours.append(run_isolated("bench_nla", "explain_latency", mode="nlakit", nla_dir=nla_dir))
    b = statistics.median(r["sec_per_position"] for r in base)
    o = statistics.median(r["sec_per_position"] for r in ours)
    RESULTS["explain"] = {"base": base, "ours": ours}
    n = ours[0]["positions"]
    return [
        f"### `nla explain` latency ({ours[0]['prompt_tokens']}-token prompt, {n} positions, 80-token explanations "
        f"forced, bf16, median of {args.repeats})",
        "",
        "| path | seconds per position | speed-up | peak RSS (MB) |",
        "|---|---|---|---|",
        f"| one HF `generate` + AR call per position (baseline) | {b:.2f} | 1.00 | "
        f"{statistics.median(r['peak_rss_mb'] for r in base):.0f} |",
        f"| `NLA.explain`: read, one batched generation, batched AR | **{o:.2f}** | **{b / o:.1f}x** | "
        f"{statistics.median(r['peak_rss_mb'] for r in ours):.0f} |",
        "",
    ]


def rl_step(args) -> list[str]:
    r = run_isolated(
        "bench_nla", "rl_step", nla_dir=str(HERE / ".cache" / "base_nla"), data_dir=str(HERE / ".cache" / "rl_data")
    )
    RESULTS["rl_step"] = r
    parts = [
        ("generation", "sec_generate"),
        ("AR scoring (reward)", "sec_reward"),
        ("AV update (ref + policy fwd/bwd)", "sec_av_update"),
        ("AR update + optimizer step", "sec_ar_update"),
    ]
    return [
        "### One RL step (SmolLM2 L20, 4 activations x group 4, 96-token cap, LoRA, bf16 autocast; median of 3 steps)",
        "",
        "| phase | seconds | share |",
        "|---|---|---|",
        *[f"| {name} | {r[key]:.1f} | {r[key] / r['sec']:.0%} |" for name, key in parts],
        f"| **total** | **{r['sec']:.1f}** | mean response length {r['length']:.0f} tokens; peak RSS "
        f"{r['peak_rss_mb']:.0f} MB |",
        "",
    ]


def rl_versus(args) -> list[str]:
    """RL rollouts/s of this tree against an older revision's, interleaved in one run on one trained NLA: the
    baseline, this tree running the KL's reference pass every step (the baseline's work), and this tree with its
    defaults, where under k1 only every `kl_every`-th step runs that pass. The timed steps of the default arm run no
    reference pass, so its figure is also given amortised: (kl_every - 1) such steps and one of the first arm's."""
    import subprocess

    old_src = HERE / ".cache" / f"rev-{args.baseline_rev}"
    if not old_src.is_dir():
        subprocess.run(["git", "worktree", "add", "-f", str(old_src), args.baseline_rev], check=True)
    kw = dict(nla_dir=args.rl_nla, data_dir=args.rl_data, steps=3, autocast=args.rl_autocast, prompts=args.rl_prompts)
    arms = {
        f"`{args.baseline_rev}` (baseline)": dict(nlakit_src=str(old_src / "src")),
        "this tree, KL every step (`kl_every=1`)": dict(kl_every=1),
        "this tree, defaults, steps without the reference pass": dict(),
    }
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, extra in arms.items():
            runs[name].append(run_isolated("bench_nla", "rl_rollouts", **kw, **extra))
    RESULTS["rl_versus"] = {"baseline_rev": args.baseline_rev, "autocast": args.rl_autocast, "runs": runs}

    def med(arm: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in arm)

    base, every, skip = runs.values()
    from nlakit.config import RLConfig

    n = RLConfig.kl_every
    amortised = ((n - 1) * med(skip, "sec") + med(every, "sec")) / n
    rollouts = 4 * args.rl_prompts
    return [
        f"### RL rollouts against `{args.baseline_rev}` ({args.rl_nla}, {args.rl_prompts} activations x group 4, "
        f"96-token cap, fp32 weights, autocast {args.rl_autocast}; median of {args.repeats} interleaved runs of 3 "
        f"steps each; CPU: {cpu_name()})",
        "",
        "| revision | s/step | generation s | AV update s | rollouts/s | ratio | reward | length | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {med(r, 'sec'):.1f} | {med(r, 'sec_generate'):.1f} | {med(r, 'sec_av_update'):.1f} | "
            f"{med(r, 'rollouts_s'):.2f} | {med(r, 'rollouts_s') / med(base, 'rollouts_s'):.2f}x | "
            f"{med(r, 'reward'):.3f} | {med(r, 'length'):.0f} | {med(r, 'peak_rss_mb'):.0f} |"
            for name, r in runs.items()
        ],
        f"| **this tree, defaults, amortised** ({n - 1} steps without the reference pass, 1 with) | "
        f"**{amortised:.1f}** | | | **{rollouts / amortised:.2f}** | "
        f"**{rollouts / amortised / med(base, 'rollouts_s'):.2f}x** | | | |",
        "",
    ]


def rollout_quality(args) -> list[str]:
    """Whether bf16 rollouts sample as well as fp32 ones: the same vectors and seeds, scored by one fp32 AR."""
    r = run_isolated("bench_nla", "rollout_quality", nla_dir=args.rl_nla, data_dir=args.rl_data, rows=args.rows)
    RESULTS["rollout_quality"] = r
    return [
        f"### RL rollouts in fp32 and on a bf16 copy ({args.rl_nla}, {r['rows']} vectors of {args.rl_data}, the same"
        f" seeds, temperature 1, 96-token cap, scored by the fp32 AR; CPU: {cpu_name()})",
        "",
        "| decode | mean mse_nrm (failed = 2.0) | failed | s per batch of 16 |",
        "|---|---|---|---|",
        *[
            f"| {k} | {r[k + '_mse']:.3f} | {r[k + '_failed']:.1%} | {r[k + '_sec_per_batch']:.1f} |"
            for k in ("fp32", "bf16")
        ],
        "",
        f"bf16 minus fp32, paired by vector: {r['bf16_minus_fp32']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
        " (95% bootstrap interval).",
        "",
    ]


def datagen_rate(args) -> list[str]:
    src = HERE / ".cache" / "dg_src"
    if not (src / "nla_meta.yaml").is_file():
        from nlakit.extract import ExtractConfig, extract

        extract(
            ExtractConfig(model="smollm2-135m", layers=[20], corpus="wiki", out=src, max_docs=300, positions_per_doc=3)
        )
    runs = [run_isolated("bench_extract", "grounded_datagen", src=str(src)) for _ in range(args.repeats)]
    RESULTS["datagen"] = runs
    r = statistics.median(x["rows_s"] for x in runs)
    return [
        f"### Grounded explanations (SmolLM2, bf16, {runs[0]['rows']} rows from ~170 documents, median of "
        f"{args.repeats})",
        "",
        f"**{r:.1f} rows/s**, peak RSS {statistics.median(x['peak_rss_mb'] for x in runs):.0f}"
        " MB. Cost is one full-model forward per document (3 rows share it), so rows/s scales with positions per"
        " document.",
        "",
    ]


RESULTS: dict = {}
SECTIONS = {
    "datagen": datagen_rate,
    "extract": extraction,
    "ar_train": ar_training,
    "av_generate": av_generation,
    "explain": explain_latency,
    "rl": rl_step,
    "rl_versus": rl_versus,
    "rollout_quality": rollout_quality,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=sorted(SECTIONS), action="append")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=20)
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--gemm-dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-rev", default="b59fa06", help="rl_versus: the revision timed as the baseline")
    p.add_argument("--rl-nla", default="runs/smollm2-L20/nla_v1", help="rl_versus: a trained NLA folder")
    p.add_argument("--rl-data", default="runs/smollm2-L20/v1_split/train", help="rl_versus: activations")
    p.add_argument("--rows", type=int, default=384, help="rollout_quality: vectors sampled in each dtype")
    p.add_argument("--rl-prompts", type=int, default=4, help="rl_versus: activations per step (x group 4)")
    p.add_argument("--rl-autocast", default="none", help="rl_versus: both revisions' autocast (none, bfloat16)")
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
