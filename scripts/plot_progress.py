"""Validation fve_nrm against CPU-hours across a recipe's stages, from the metrics logs kept in the recipe folder.

    python scripts/plot_progress.py recipes/smollm2-L20/logs --out recipes/smollm2-L20/logs/progress.png

Hours are the summed `sec` of logged steps (every step is logged at log_every=1; otherwise the per-step time of
the logged rows is scaled by the logging interval), so they count training compute, not evaluation or idle time; a
step logged at more than 3x the median (it spanned a pause, or an evaluation) counts as a median step.
The AR SFT curve is the AR reading the teacher's explanations (the format's ceiling); the RL and AR-adaptation
curves are the AV's own explanations read by the AR, which is what the NLA delivers. Stages are drawn in the order
they ran; a stage whose log is missing is skipped. The validation rows differ by stage (see each label). Stages
run on a lent GPU are drawn in a second panel against GPU-minutes: their time is not comparable with CPU-hours.
`--best-of REPORT.json ...` adds a third panel from `nla eval --best-of N` reports: held-out fve_nrm against the
candidates per position, the compute spent at inference instead of in training. `--table OUT.md` also writes the
stages as a Markdown table: training hours, cumulative CPU-hours, and val fve_nrm first, last and best.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STAGES = (  # (log file, metric, label, line style)
    ("ar_sft_metrics.jsonl", "val_fve_nrm", "v1 AR SFT: teacher text -> AR (512 wiki val rows)", "-"),
    ("av_sft_metrics.jsonl", "val_fve_nrm", "v1 AV SFT: AV text -> AR", "-"),
    ("rl_metrics.jsonl", "val_fve_nrm", "v1 RL: AV text -> live AR (64 wiki val rows)", "-"),
    ("rl_continue_attempt_metrics.jsonl", "val_fve_nrm", "v2 try: more RL, fresh optimizer (abandoned)", ":"),
    ("ar_adapt_metrics.jsonl", "val_fve_nrm", "v2: AR adapted to AV text (210 wiki+chat+code rows)", "-"),
    ("ar_adapt_v3e2_metrics.jsonl", "val_fve_nrm", "v3: + news/instructions, 2 epochs (330 rows; v3 = epoch 1)", "-"),
    # its ~0.9 CPU-h of best-of-8 generation is not in the log's step times
    (
        "expert_iter_metrics.jsonl",
        "val_fve_nrm",
        "expert iteration on best-of-8 picks (128 of the 330; v4 there: 0.330)",
        ":",
    ),
    ("expert_iter_lr5e-4_metrics.jsonl", "val_fve_nrm", "expert iteration at lr 5e-4 (same 128 rows; stopped)", ":"),
    ("ar_quote_metrics.jsonl", "val_fve_nrm", "v5: AR learns the {quote} template (330 rows; v4: 0.209)", "-"),
    ("ar_quote_control_metrics.jsonl", "val_fve_nrm", "control: same data and steps, reference template", ":"),
    ("rl_quote_metrics.jsonl", "val_fve_nrm", "RL against v5's frozen AR (96 rows, rl_mix variance; stopped)", ":"),
    (
        "av_more_metrics.jsonl",
        "val_fve_nrm",
        "AV on more teacher pairs via v5's AR (160 of the 330 rows; shipped AV: 0.364)",
        "-",
    ),
    (
        "av_v6_metrics.jsonl",
        "val_fve_nrm",
        "v6 try: AV afresh on every teacher pair via v5's AR (96 mixed val rows; shipped: 0.408)",
        "-",
    ),
    ("ar_v6_metrics.jsonl", "val_fve_nrm", "v6: v5's AR adapted to the v6 AV's text (all 354 val rows)", "-"),
    (
        "ar_v6b_metrics.jsonl",
        "val_fve_nrm",
        "v6b: the same on a register-balanced mix (same 354 rows; variance of its mix)",
        "-",
    ),
    ("rl_v7_metrics.jsonl", "val_fve_nrm", "v7: RL of the v6 AV vs v6b's live AR (96 of the 354 val rows)", "-"),
    (
        "rl_v8_metrics.jsonl",
        "val_fve_nrm",
        "v8: RL on balanced registers (v7's 96 val rows, this set's variance)",
        "-",
    ),
)
GPU_STAGES = (("rl_gpu_s7_metrics.jsonl", "val_fve_nrm", "RL from v3, 256 rollouts/step (128 wiki val rows)", "-"),)


def curve(path: Path, key: str) -> tuple[list[float], list[float], float]:
    """(hours, values, total hours) of one stage's log."""
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    steps = [r for r in rows if "sec" in r]
    interval = (steps[1]["step"] - steps[0]["step"]) if len(steps) > 1 else 1
    hours, xs, ys = 0.0, [], []
    by_step = {r["step"]: r for r in steps}
    # `sec` is wall time: a step that spanned a pause (the job stopped for a test) or an evaluation counts as a typical
    # step, so the hours stay compute
    typical = sorted(r["sec"] for r in steps)[len(steps) // 2] if steps else 0.0
    for r in sorted(rows, key=lambda r: r["step"]):
        if r["step"] in by_step and r is by_step[r["step"]]:
            hours += (r["sec"] if r["sec"] <= 3 * typical else typical) * interval / 3600
        if key in r:
            xs.append(hours)
            ys.append(r[key])
    return xs, ys, hours


def stage_table(logs: Path) -> str:
    """The stages as Markdown rows: training hours, cumulative hours and val fve_nrm at the first and last eval and
    the best one. Each stage's val rows and variance are its own (see the label), so compare within a row."""
    out = [
        "| stage | hours | cumulative | val fve first | last | best |",
        "|---|---|---|---|---|---|",
    ]
    total = 0.0
    for stages, unit in ((STAGES, "CPU-h"), (GPU_STAGES, "GPU-h")):
        for name, key, label, _ in stages:
            if not (logs / name).is_file():
                continue
            _, ys, hours = curve(logs / name, key)
            total += hours if unit == "CPU-h" else 0.0
            cum = f"{total:.2f}" if unit == "CPU-h" else "-"
            vals = f"{ys[0]:.3f} | {ys[-1]:.3f} | {max(ys):.3f}" if ys else "- | - | -"
            out.append(f"| {label.replace('|', '/')} | {hours:.2f} {unit} | {cum} | {vals} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", type=Path, help="the recipe's logs folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--best-of", type=Path, nargs="*", default=[], help="nla eval --best-of reports (report.json)")
    ap.add_argument("--table", type=Path, help="also write the stages as a Markdown table (hours and val fve) here")
    args = ap.parse_args()
    if args.table:
        args.table.write_text(stage_table(args.logs))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [(p, json.loads(p.read_text())) for p in args.best_of]
    panels = 3 if reports else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 6), width_ratios=(2, 1, 1)[:panels], sharey=True)
    ax, gpu = axes[0], axes[1]
    ax.set_prop_cycle(color=plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2])  # > 10 stages; shades apart
    offset = 0.0
    for name, key, label, style in STAGES:
        log = args.logs / name
        if not log.is_file():
            continue
        xs, ys, total = curve(log, key)
        if xs:
            ax.plot([offset + x for x in xs], ys, marker=".", ls=style, label=label)
        offset += total
    for name, key, label, style in GPU_STAGES:
        if (args.logs / name).is_file():
            xs, ys, _ = curve(args.logs / name, key)
            gpu.plot([60 * x for x in xs], ys, marker=".", ls=style, label=label, color="tab:purple")
    if reports:
        inf = axes[2]
        for path, r in reports:
            curve_k = r["best_of"]["curve"]
            inf.plot([int(k) for k in curve_k], list(curve_k.values()), marker="o", label=f"{path.parent.name} (test)")
        inf.set(xscale="log", xlabel="candidates per position (greedy + k-1 samples)", title="held-out, at inference")
        inf.minorticks_off()
        inf.set_xticks([int(k) for k in curve_k], [str(k) for k in curve_k])
    for a in axes:
        a.axhline(0.5, color="grey", ls="--", lw=0.8, label="goal 0.5")
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: the curves stay visible
    ax.set_xlabel("training CPU-hours (2 cores)")
    ax.set_ylabel("val fve_nrm")
    gpu.set_xlabel("training GPU-minutes (one H100)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
