"""The SFT loop shared by `sft_ar` and `sft_av`: read pairs, step with grad accumulation under autocast, evaluate,
checkpoint every N steps and resume exactly (weights, optimizer, schedule, RNG; data order depends on the step)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nlakit.config import SFTConfig
from nlakit.dataset import Pairs
from nlakit.errors import NlakitError
from nlakit.meta import AR_TEMPLATE, AV_TEMPLATE, ModelMeta
from nlakit.train.loop import (
    Metrics,
    autocast_context,
    batch_indices,
    has_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    lr_factor,
    run_steps,
    save_checkpoint,
)


def sft_model_meta(
    role: str,
    cfg: SFTConfig,
    train: Pairs,
    tokens,
    *,
    injection_scale: float | None,
    loss_type: str,
    av_template: str = AV_TEMPLATE,
    ar_template: str = AR_TEMPLATE,
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
        prompt_templates={"av": av_template, "ar": ar_template},
        stage="sl",
        base_checkpoint=cfg.base or ext.base_model,
        target=ext.base_model,
        trained_on=train.meta.dataset_id,
        training={
            "lr": cfg.lr,
            "loss_type": loss_type,
            "global_batch_size": cfg.batch_size * cfg.grad_accum,
            "lora": cfg.lora,
            "max_steps": total_steps(cfg, len(train.texts)),
            **training,
        },
    )


def total_steps(cfg: SFTConfig, n_rows: int) -> int:
    """`max_steps`, or `epochs` passes over the pairs when set (one epoch = every pair once)."""
    if cfg.epochs is None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * n_rows / (cfg.batch_size * cfg.grad_accum)))


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
    max_steps = total_steps(cfg, len(train.texts))
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, max_steps, cfg.schedule, cfg.min_lr_ratio)
    )
    start = 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        start = load_checkpoint(ckpt, module, opt, sched)["step"]
    metrics = Metrics(run_dir / "metrics.jsonl", resume_step=start)
    n = len(train.texts)

    def step(i: int) -> dict[str, float]:
        t0 = time.perf_counter()
        total = 0.0
        for micro in range(cfg.grad_accum):
            idx = batch_indices(n, cfg.batch_size, i * cfg.grad_accum + micro, cfg.seed)
            with autocast(cfg):
                loss = loss_fn(train.vectors[idx], [train.texts[j] for j in idx]) / cfg.grad_accum
            loss.backward()
            total += loss.item()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        lr = sched.get_last_lr()[0]
        return {"step": i + 1, "loss": total, "lr": lr, "grad_norm": grad_norm, "sec": time.perf_counter() - t0}

    def evaluate_now() -> dict[str, float]:
        module.eval()
        with torch.no_grad(), autocast(cfg):
            result = evaluate()
        module.train()
        return result

    def checkpoint(i: int) -> None:
        save_checkpoint(run_dir, i, module, opt, sched)
        metrics.plot(run_dir / "curves.png", plot_keys, f"{role.upper()} SFT")

    module.train()
    last_eval = run_steps(
        f"sft {role}",
        start,
        max_steps,
        step,
        evaluate=evaluate_now,
        checkpoint=checkpoint,
        metrics=metrics,
        eval_every=cfg.eval_every,
        log_every=cfg.log_every,
        save_every=cfg.save_every,
    )
    if not has_checkpoint(run_dir, max_steps):
        checkpoint(max_steps)
    return last_eval


def shuffled(vectors: torch.Tensor, seed: int) -> torch.Tensor:
    """The same vectors in another order: the shuffled-activation control."""
    perm = np.random.default_rng(seed).permutation(len(vectors))
    return vectors[perm]


def check_init_from(src: Path, have: ModelMeta, want: ModelMeta, verb: str) -> None:
    """A trained AR or AV continued on new data must work at the data's layer and width."""
    if (have.d_model, have.extraction_layer_index) != (want.d_model, want.extraction_layer_index):
        raise NlakitError(
            f"init_from {src} {verb} layer {have.extraction_layer_index} (d={have.d_model}), "
            f"unlike the data (layer {want.extraction_layer_index}, d={want.d_model})"
        )
