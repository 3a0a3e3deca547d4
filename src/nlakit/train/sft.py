"""The SFT loop shared by `sft_ar` and `sft_av`: read pairs, step with grad accumulation under autocast, evaluate,
checkpoint every N steps and resume exactly (weights, optimizer, schedule, RNG; data order depends on the step)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nlakit import dataset as ds
from nlakit.errors import NlakitError
from nlakit.meta import AR_TEMPLATE, AV_TEMPLATE, DatasetMeta, ModelMeta
from nlakit.progress import progress_bar
from nlakit.train.config import SFTConfig
from nlakit.train.loop import (
    Metrics,
    autocast_context,
    batch_indices,
    has_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    lr_factor,
    save_checkpoint,
)


@dataclass
class Pairs:
    vectors: torch.Tensor  # [n, d] raw activations
    texts: list[str]
    meta: DatasetMeta


def load_pairs(path: str, column: str, max_rows: int | None = None) -> Pairs:
    table, meta = ds.load(path, ["activation_vector", column])
    if column not in table.column_names:
        raise NlakitError(f"{path} has no {column!r} column; run `nla datagen` on it first")
    texts = table.column(column).to_pylist()
    vectors = torch.from_numpy(ds.vectors_of(table))
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    if not keep:
        raise NlakitError(f"{path} has no non-empty {column!r} rows")
    keep = keep[:max_rows] if max_rows else keep
    return Pairs(vectors[keep], [texts[i] for i in keep], meta)


def sft_model_meta(
    role: str,
    cfg: SFTConfig,
    train: Pairs,
    tokens,
    *,
    injection_scale: float | None,
    loss_type: str,
    av_template: str = AV_TEMPLATE,
    **training,
) -> ModelMeta:
    """The model sidecar an SFT recipe writes: what the vectors are, the marker, templates and training summary."""
    ext = train.meta.extraction
    return ModelMeta(
        role=role,
        d_model=ext.d_model,
        extraction_layer_index=ext.layer_index,
        injection_scale=injection_scale,
        mse_scale=math.sqrt(ext.d_model),
        tokens=tokens,
        prompt_templates={"av": av_template, "ar": AR_TEMPLATE},
        stage="sl",
        base_checkpoint=cfg.base or ext.base_model,
        target=ext.base_model,
        trained_on=train.meta.dataset_id,
        training={
            "lr": cfg.lr,
            "loss_type": loss_type,
            "global_batch_size": cfg.batch_size * cfg.grad_accum,
            "lora": cfg.lora,
            "max_steps": cfg.max_steps,
            **training,
        },
    )


def autocast(cfg: SFTConfig):
    return autocast_context(cfg.autocast, cfg.device)


def run_sft(
    cfg: SFTConfig,
    role: str,
    module: torch.nn.Module,
    train: Pairs,
    loss_fn: Callable[[torch.Tensor, list[str]], torch.Tensor],
    evaluate: Callable[[], dict[str, float]],
    plot_keys: list[str],
) -> dict[str, float]:
    """Train `module` (its parameters with requires_grad) on `train`; returns the last evaluation."""
    run_dir = Path(cfg.out) / f"train_{role}"
    run_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps, cfg.schedule, cfg.min_lr_ratio)
    )
    start = 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        start = load_checkpoint(ckpt, module, opt, sched)["step"]
    metrics = Metrics(run_dir / "metrics.jsonl", resume_step=start)
    done = start
    n = len(train.texts)
    last_eval: dict[str, float] = {}

    def checkpoint(step: int) -> None:
        save_checkpoint(run_dir, step, module, opt, sched)
        metrics.plot(run_dir / "curves.png", plot_keys, f"{role.upper()} SFT")

    module.train()
    with progress_bar(f"sft {role}", total=cfg.max_steps, completed=start) as bar:
        try:
            for step in range(start, cfg.max_steps):
                t0 = time.perf_counter()
                total = 0.0
                for micro in range(cfg.grad_accum):
                    idx = batch_indices(n, cfg.batch_size, step * cfg.grad_accum + micro, cfg.seed)
                    with autocast(cfg):
                        loss = loss_fn(train.vectors[idx], [train.texts[i] for i in idx]) / cfg.grad_accum
                    loss.backward()
                    total += loss.item()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                done = step + 1  # from here on this step's update is in the weights
                row = {
                    "step": step + 1,
                    "loss": total,
                    "lr": sched.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "sec": time.perf_counter() - t0,
                }
                if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps:
                    module.eval()
                    with torch.no_grad(), autocast(cfg):
                        last_eval = evaluate()
                    module.train()
                    row.update(last_eval)
                if (step + 1) % cfg.log_every == 0 or "val_loss" in row or any(k.startswith("val") for k in row):
                    metrics.log(row)
                if (step + 1) % cfg.save_every == 0:
                    checkpoint(step + 1)
                bar.advance(1)
        except KeyboardInterrupt:
            checkpoint(done)  # Ctrl-C keeps the finished steps; the run resumes from here
            raise
    if not has_checkpoint(run_dir, cfg.max_steps):
        checkpoint(cfg.max_steps)
    return last_eval


def shuffled(vectors: torch.Tensor, seed: int) -> torch.Tensor:
    """The same vectors in another order: the shuffled-activation control."""
    perm = np.random.default_rng(seed).permutation(len(vectors))
    return vectors[perm]
