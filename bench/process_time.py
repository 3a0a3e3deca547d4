"""Whole-process timing of a command, optionally paired against a baseline command: A and B run in turn (A B A B
...), so a drift in the machine's speed hits both, and the ratio A/B is taken pair by pair. Prints each figure's
median, min and max; quote the median. Standard library only, so anyone can rerun a figure of BENCHMARKS.md:

    python bench/process_time.py -n 3 --warmup 1 --vs "bench/explain_process.sh max_new_tokens=200" -- \
        bench/explain_process.sh
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import statistics
import subprocess
import time


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_once(cmd: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system of the reaped children) and exit code of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    code = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "exit": code}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--vs", help="the baseline command B, one string split as a shell splits words")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.runs < 1 or args.warmup < 0:
        p.error("-n must be 1 or more and --warmup 0 or more")
    a = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not a:
        p.error("give the command to time after --")
    b = shlex.split(args.vs) if args.vs else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {cpu_name()}, {cores} cores")
    for _ in range(args.warmup):
        run_once(a)
        if b:
            run_once(b)
    runs_a, runs_b = [], []
    for _ in range(args.runs):
        runs_a.append(run_once(a))
        if b:
            runs_b.append(run_once(b))
    for name, cmd, runs in (("A", a, runs_a), ("B", b, runs_b)):
        if cmd:
            print(f"{name}: {shlex.join(cmd)}")
            print(
                f"   wall s {spread([r['wall'] for r in runs])}   cpu s {spread([r['cpu'] for r in runs])}"
                f"   exit codes {sorted({r['exit'] for r in runs})}"
            )
    failed = [r["exit"] for r in runs_a + runs_b if r["exit"] != 0]
    if failed:  # a failed run's time says nothing about the command's speed
        raise SystemExit(f"error: {len(failed)} run(s) exited non-zero {sorted(set(failed))}; run the command alone")
    if b:
        print(
            f"ratio A/B, pair by pair: {spread([x['wall'] / y['wall'] for x, y in zip(runs_a, runs_b, strict=True)])}"
        )


if __name__ == "__main__":
    main()
