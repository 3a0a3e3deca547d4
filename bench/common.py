"""Shared benchmark helpers: each measurement runs in its own subprocess, so its peak RSS is its own."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent


def run_isolated(module: str, func: str, *, nlakit_src: str | None = None, **kwargs) -> dict:
    """Run `bench.<module>.<func>(**kwargs)` in a fresh Python; it returns a JSON dict, we add its peak RSS (MB).
    `nlakit_src`: import nlakit from this source folder (an older revision's, for a baseline in the same run)."""
    code = (
        f"import json,resource,sys; sys.path.insert(0, {str(HERE.parent)!r})\n"
        f"from bench.{module} import {func} as f\n"
        "out = f(**json.loads(sys.argv[1]))\n"
        "out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print('@@' + json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": nlakit_src} if nlakit_src else None
    r = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{module}.{func} failed:\n{r.stderr[-3000:]}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("@@")][-1]
    return json.loads(line[2:])


def median_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_peak_gflops(dtype_name: str = "bfloat16", n: int = 2048) -> float:
    """This CPU's dense matmul throughput (GFLOP/s) for the dtype, measured now: the 'fraction of peak' denominator."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = median_time(lambda: a @ b, repeats=5, warmup=2)
    return 2 * n**3 / t / 1e9


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
