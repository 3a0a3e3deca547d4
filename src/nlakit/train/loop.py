"""What every recipe shares: data order, LR schedule, LoRA, exact-resume checkpoints, metrics (JSONL + PNG)."""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nlakit.io import atomic_write_text, umask_modes
from nlakit.progress import progress_bar

CKPT_PREFIX = "step_"


@functools.lru_cache(maxsize=4)
def _epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def batch_indices(n_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of batch `step`: each epoch is a fresh permutation from (seed, epoch), so order depends on step alone."""
    start = step * batch_size
    return np.array([_epoch_order(n_rows, seed, g // n_rows)[g % n_rows] for g in range(start, start + batch_size)])


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def add_lora(model, r: int, alpha: int, task_type: str | None = None):
    """LoRA on every linear layer of the blocks (attention and MLP), no dropout (keeps training deterministic)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type=task_type)
    return get_peft_model(model, cfg)


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in module.named_parameters() if p.requires_grad}


def save_checkpoint(
    run_dir: Path, step: int, module: torch.nn.Module, optimizer, scheduler, extra: dict | None = None, keep: int = 2
) -> Path:
    """Write `run_dir/checkpoints/step_N` atomically (temp folder + rename); keep the newest `keep`."""
    root = run_dir / "checkpoints"
    final = root / f"{CKPT_PREFIX}{step:07d}"
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with umask_modes(tmp):
        save_file(trainable_state(module), tmp / "trainable.safetensors")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "py_rng": random.getstate(),
            "np_rng": np.random.get_state(),
        },
        tmp / "state.pt",
    )
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **(extra or {})}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob(f"{CKPT_PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted((run_dir / "checkpoints").glob(f"{CKPT_PREFIX}*"))
    return done[-1] if done else None


def has_checkpoint(run_dir: Path, step: int) -> bool:
    return (run_dir / "checkpoints" / f"{CKPT_PREFIX}{step:07d}").is_dir()


def load_checkpoint(path: Path, module: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore trainable weights, optimizer, scheduler and RNG; returns trainer_state (with `step`)."""
    weights = load_file(path / "trainable.safetensors")
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    # map_location: a run checkpointed on a GPU resumes on a CPU-only machine (the optimizer re-homes its state)
    state = torch.load(path / "state.pt", weights_only=False, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["py_rng"])
    np.random.set_state(state["np_rng"])
    return json.loads((path / "trainer_state.json").read_text())


class Metrics:
    """Append-only JSONL log; on resume, rows after the checkpoint's step are dropped so the log stays exact."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        rows = []
        if path.is_file():
            rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
            rows = [r for r in rows if r.get("step", 0) <= resume_step]
        self.rows = rows
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, png: Path, keys: list[str], title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in keys if any(k in r for r in self.rows)]
        if not keys:
            return
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            pts = [(r["step"], r[key]) for r in self.rows if key in r]
            ax.plot(*zip(*pts, strict=True), marker="." if len(pts) < 60 else None)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        tmp = png.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(png)


# Settings that fix data order and the shape of the trained state: a resumed run must keep them.
RESUME_KEYS = ("data", "seed", "batch_size", "grad_accum", "lora", "lora_r", "group_size", "prompts_per_step", "nla")


def start_run(run_dir: Path, config: dict[str, Any], seed: int) -> None:
    """Seed everything (before any model is built: LoRA init draws from the RNG) and record the config; on resume,
    refuse settings that would silently change the data order or the trained state."""
    from nlakit.errors import NlakitError
    from nlakit.meta import read_yaml, write_yaml

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    if path.is_file() and latest_checkpoint(run_dir) is not None:
        old = read_yaml(path)
        changed = [k for k in RESUME_KEYS if k in config and old.get(k) != config[k]]
        if changed:
            raise NlakitError(
                f"{run_dir} was started with other {', '.join(changed)}; resume with the same settings "
                "or use a new out folder"
            )
    write_yaml(path, config)


def autocast_dtype(name: str | None, device: str) -> torch.dtype | None:
    """The dtype an autocast name computes in: bf16/fp16 by name, `auto` (bf16 where the dtype probe finds it faster:
    CUDA, AVX-512 bf16 CPUs; none where bf16 is emulated, e.g. AVX2-only CPUs, 100x slower), or None for none;
    anything else is an error."""
    from nlakit.errors import NlakitError
    from nlakit.models import DTYPES, resolve_dtype

    if name == "auto":
        name = "bfloat16" if resolve_dtype("auto", device) == torch.bfloat16 else "none"
    if name in (None, "", "none"):
        return None
    dtype = DTYPES.get(name)
    if dtype not in (torch.bfloat16, torch.float16):
        raise NlakitError(f"autocast {name!r} is not one of none, bfloat16, float16")
    return dtype


def autocast_context(name: str | None, device: str):
    """Autocast to `autocast_dtype(name, device)`, or a disabled autocast where that is None."""
    dtype = autocast_dtype(name, device)
    if dtype is None:
        return torch.autocast(device_type=torch.device(device).type, enabled=False)
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def run_steps(
    name: str,
    start: int,
    max_steps: int,
    step: Callable[[int], dict[str, Any]],
    *,
    evaluate: Callable[[], dict[str, float]] | None,
    checkpoint: Callable[[int], None],
    metrics: Metrics | None,
    eval_every: int,
    log_every: int,
    save_every: int,
    is_main: bool = True,
) -> dict[str, float]:
    """The loop every recipe shares (torchtune's `train`): `step(i)` updates the weights and returns its log row;
    evaluate, log and checkpoint on their cadences; Ctrl-C checkpoints the finished steps, so a run resumes there.
    Returns the last evaluation."""
    last_eval: dict[str, float] = {}
    done = start
    with progress_bar(name, total=max_steps, completed=start) as bar:
        try:
            for i in range(start, max_steps):
                row = step(i)
                done = i + 1  # from here on this step's update is in the weights
                if evaluate is not None and is_main and (done % eval_every == 0 or done == max_steps):
                    last_eval = evaluate()
                    row.update(last_eval)
                if metrics is not None and (done % log_every == 0 or last_eval.keys() & row.keys()):
                    metrics.log(row)
                if done % save_every == 0:
                    checkpoint(done)
                bar.advance(1)
        except KeyboardInterrupt:
            checkpoint(done)
            raise
    return last_eval
