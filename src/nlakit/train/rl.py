"""RL recipe: GRPO for the AV with the live AR as reward model, and the AR trained on the same fresh explanations.

Each step (reference §3.3, scaled to CPU sizes):
1. take `prompts_per_step` activations; sample `group_size` explanations for each (temperature 1, length cap);
2. reward = -mse_nrm(AR(explanation), v) from the AR as it stands (or -log mse); a sample with no closing tag or
   that hit the cap is failed: reward -2 (the orthogonal value) and its advantage is never positive;
3. advantages = (r - group mean) / (group std + 1e-6);
4. AV loss = PPO-clipped policy loss (eps 0.2) + kl_coef * KL(AV || frozen SFT AV), per-sample token mean;
5. AR loss = mse_nrm on the completed samples (optionally also on paraphrases of them, which denies the pair
   steganographic side channels); both updates, one optimizer step per rollout.
With LoRA checkpoints the frozen reference AV costs almost no memory: the SFT adapters are loaded twice over one
base model, "default" (trained) and "ref" (frozen), and the reference pass switches adapters. Full-weight
checkpoints are trained in full, with a frozen copy as the reference.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nlakit.ar import AR
from nlakit.av import AV, extract_explanation
from nlakit.errors import NlakitError
from nlakit.generation import SamplingConfig
from nlakit.maths import fve_nrm, mse_nrm, rawvar_baseline
from nlakit.nla import resolve_nla_path, score_texts, write_pair_meta
from nlakit.paraphrase import paraphrase
from nlakit.progress import progress_bar
from nlakit.train import dist
from nlakit.train.config import dump_config
from nlakit.train.loop import (
    Metrics,
    autocast_context,
    batch_indices,
    has_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    start_run,
)
from nlakit.train.sft import load_pairs

FAILED_REWARD = -2.0


@dataclass
class RLConfig:
    data: str  # activations (an explanation column is not needed)
    nla: str  # the SFT NLA folder (av/ and ar/)
    out: str  # new NLA folder: out/av, out/ar, out/train_rl
    val_data: str | None = None
    group_size: int = 4
    prompts_per_step: int = 4
    max_new_tokens: int = 96
    temperature: float = 1.0
    av_lr: float = 1e-5
    ar_lr: float = 5e-5
    clip_eps: float = 0.2
    kl_coef: float = 0.01
    kl_type: str = "k1"  # or "k3"
    reward: str = "mse"  # or "log_mse"
    length_penalty: float = 0.0  # reward -= length_penalty * response tokens
    paraphrase_aug: bool = False
    grad_clip: float = 1.0
    max_steps: int = 100
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    autocast: str = "bfloat16"
    save_every: int = 10
    eval_every: int = 25
    eval_rows: int = 64
    sample_every: int = 10
    log_every: int = 1


def group_advantages(rewards: torch.Tensor, group_size: int, failed: torch.Tensor) -> torch.Tensor:
    """GRPO: standardise within each group (unbiased std); failed samples are never advantaged."""
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=True) + 1e-6)
    adv = adv.view(-1)
    return torch.where(failed, adv.clamp_max(0.0), adv)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    adv: torch.Tensor,
    valid: torch.Tensor,
    clip_eps: float,
    kl_coef: float,
    kl_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clipped surrogate plus KL to the reference, token mean per sample then mean over samples."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = -torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    delta = ref_logp - logp
    kl = -delta if kl_type == "k1" else torch.exp(delta) - delta - 1
    per_token = (surrogate + kl_coef * kl) * valid
    n = valid.sum(1).clamp_min(1)
    kl_mean = ((kl * valid).sum(1) / n).mean()
    return (per_token.sum(1) / n).mean(), kl_mean


def _reference_policy(av: AV, path: Path):
    """A context manager under which `av` computes with the frozen SFT policy."""
    if hasattr(av.model, "peft_config"):
        av.model.load_adapter(str(path), adapter_name="ref", is_trainable=False)

        @contextlib.contextmanager
        def switch():
            av.model.set_adapter("ref")
            try:
                yield
            finally:
                av.model.set_adapter("default")  # also restores requires_grad on the trained adapter

        return switch
    frozen = copy.deepcopy(av.model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def swap():
        live, av.model = av.model, frozen
        try:
            yield
        finally:
            av.model = live

    return swap


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{step}|{rank}".encode()).digest()[:4], "big")


def train_rl(cfg: RLConfig) -> dict[str, float]:
    if cfg.group_size < 2:
        raise NlakitError("group_size must be at least 2 (GRPO compares samples within a group)")
    rank, world = dist.init(cfg.device)
    if cfg.prompts_per_step < world:
        raise NlakitError(f"prompts_per_step={cfg.prompts_per_step} is less than the {world} processes; raise it")
    src = resolve_nla_path(cfg.nla)
    run_dir = Path(cfg.out) / "train_rl"
    start_run(run_dir, dump_config(cfg), cfg.seed + rank)
    av = AV.from_pretrained(src / "av", device=cfg.device, dtype=cfg.dtype, trainable=True)
    ar = AR.from_pretrained(src / "ar", device=cfg.device, dtype=cfg.dtype, trainable=True)
    ar.value_head.weight.requires_grad_(True)
    reference = _reference_policy(av, src / "av")
    both = torch.nn.ModuleDict({"av": av.model, "ar": ar})
    av_params = [p for p in av.model.parameters() if p.requires_grad]
    ar_params = [p for p in ar.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": av_params, "lr": cfg.av_lr}, {"params": ar_params, "lr": cfg.ar_lr}],
        betas=(0.9, 0.95),
        weight_decay=0.0,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)  # constant, as the reference's RL

    data = load_pairs(cfg.data, "context")
    val = load_pairs(cfg.val_data, "context", cfg.eval_rows) if cfg.val_data else None
    rawvar = rawvar_baseline(data.vectors)
    start = 0
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        start = load_checkpoint(ckpt, both, opt, sched)["step"]
    metrics = Metrics(run_dir / "metrics.jsonl", resume_step=start) if rank == 0 else None
    autocast = autocast_context(cfg.autocast, cfg.device)
    max_ar_tokens = 300

    def evaluate() -> dict[str, float]:
        texts = av.verbalize(val.vectors, max_new_tokens=cfg.max_new_tokens)
        mse = float(score_texts(ar, texts, val.vectors)["mse_nrm"].mean())
        return {"val_mse_nrm": mse, "val_fve_nrm": float(fve_nrm(mse, rawvar))}

    def checkpoint(step: int) -> None:
        if rank == 0:
            save_checkpoint(run_dir, step, both, opt, sched)
            metrics.plot(run_dir / "curves.png", ["reward", "fve_nrm", "length", "kl", "failed", "val_fve_nrm"], "RL")
        dist.barrier()

    if start == 0 and val is not None and rank == 0:  # the SFT starting point, for the curve to be read against
        av.model.eval()
        with autocast:
            metrics.log({"step": 0, **evaluate()})
    done = start
    with progress_bar("rl", total=cfg.max_steps, completed=start) as bar:
        try:
            for step in range(start, cfg.max_steps):
                t0 = time.perf_counter()
                idx = batch_indices(len(data.texts), cfg.prompts_per_step, step, cfg.seed)[rank::world]
                gold = data.vectors[idx].repeat_interleave(cfg.group_size, dim=0)
                # 1. rollouts from the current policy
                av.model.eval()
                sampling = SamplingConfig(
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature,
                    seed=_step_seed(cfg.seed, step, rank),
                )
                generated = av.generate_ids(gold, sampling)
                t_gen = time.perf_counter()
                texts = av.tok.batch_decode(generated, skip_special_tokens=True)
                ids, mask, labels = av.rollout_batch(generated)
                valid = labels[:, len(av.prompt_ids) :] != -100
                lengths = valid.sum(1)
                hit_eos = torch.tensor([any(t in av.eos_ids for t in row) for row in generated.tolist()])
                parsed = [extract_explanation(t) for t in texts]
                ok = torch.tensor([complete and bool(e) for e, complete in parsed]) & hit_eos
                explanations = [e for e, _ in parsed]
                ar_ids_len = [len(ar.tok(ar.meta.ar_template.format(explanation=e))["input_ids"]) for e in explanations]
                ok &= torch.tensor([n <= max_ar_tokens for n in ar_ids_len])
                # 2. rewards from the live AR
                mse = torch.full((len(texts),), 2.0)
                with torch.no_grad(), autocast:
                    if ok.any():
                        sel = ok.nonzero()[:, 0]
                        mse[sel] = mse_nrm(ar.reconstruct([explanations[i] for i in sel]), gold[sel], ar.meta.mse_scale)
                t_reward = time.perf_counter()
                reward = -torch.log(mse.clamp_min(1e-8)) if cfg.reward == "log_mse" else -mse
                fail_value = -math.log(2.0) if cfg.reward == "log_mse" else FAILED_REWARD
                reward = torch.where(ok, reward - cfg.length_penalty * lengths, torch.full_like(reward, fail_value))
                adv = group_advantages(reward, cfg.group_size, ~ok).to(av.device)
                # 3. AV update: PPO-clipped policy loss + KL to the frozen SFT AV
                av.model.train()
                with torch.no_grad(), autocast:
                    with reference():
                        ref_logp = av.token_logprobs(gold, ids, mask, labels)
                with autocast:
                    logp, entropy = av.token_logprobs(gold, ids, mask, labels, with_entropy=True)
                    av_loss, kl = policy_loss(
                        logp, logp.detach(), ref_logp, adv, valid, cfg.clip_eps, cfg.kl_coef, cfg.kl_type
                    )
                av_loss.backward()
                t_av = time.perf_counter()
                # 4. AR update on the same fresh explanations (and their paraphrases)
                ar_loss = torch.tensor(0.0)
                if ok.any():
                    sel = ok.nonzero()[:, 0].tolist()
                    ar_texts, ar_gold = [explanations[i] for i in sel], gold[sel]
                    if cfg.paraphrase_aug:
                        rng = random.Random(_step_seed(cfg.seed, step, rank))
                        ar_texts = ar_texts + [paraphrase(t, rng) for t in ar_texts]
                        ar_gold = torch.cat([ar_gold, ar_gold])
                    with autocast:
                        ar_loss = ar.loss(ar_texts, ar_gold)
                    ar_loss.backward()
                dist.average_gradients(av_params + ar_params)
                torch.nn.utils.clip_grad_norm_(av_params, cfg.grad_clip)
                torch.nn.utils.clip_grad_norm_(ar_params, cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                done = step + 1  # from here on this step's update is in the weights

                stats = dist.mean_scalars(
                    {
                        "reward": float(reward.mean()),
                        "mse_nrm": float(mse[ok].mean()) if ok.any() else 2.0,
                        "length": float(lengths.float().mean()),
                        "kl": float(kl.detach()),
                        "failed": float((~ok).float().mean()),
                        "entropy": float((entropy.detach().sum(1) / valid.sum(1).clamp_min(1)).mean()),
                        "ar_loss": float(ar_loss.detach()),
                    }
                )
                now = time.perf_counter()
                row = {
                    "step": step + 1,
                    **stats,
                    "fve_nrm": float(fve_nrm(stats["mse_nrm"], rawvar)),
                    "sec": now - t0,
                    # where the step's time went (the optimizer step is counted with the AR update)
                    "sec_generate": t_gen - t0,
                    "sec_reward": t_reward - t_gen,
                    "sec_av_update": t_av - t_reward,
                    "sec_ar_update": now - t_av,
                }
                if val is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps) and rank == 0:
                    av.model.eval()
                    with autocast:
                        row.update(evaluate())
                if rank == 0 and (step + 1) % cfg.sample_every == 0:
                    row["sample"] = {"explanation": explanations[0], "mse_nrm": float(mse[0]), "ok": bool(ok[0])}
                if rank == 0 and ((step + 1) % cfg.log_every == 0 or "val_fve_nrm" in row):
                    metrics.log(row)
                if (step + 1) % cfg.save_every == 0:
                    checkpoint(step + 1)
                bar.advance(1)
        except KeyboardInterrupt:
            checkpoint(done)  # Ctrl-C keeps the finished steps; the run resumes from here
            raise
    if not has_checkpoint(run_dir, cfg.max_steps):
        checkpoint(cfg.max_steps)
    if rank == 0:
        if hasattr(av.model, "peft_config"):
            av.model.delete_adapter("ref")
        av.meta.stage = ar.meta.stage = "rl"
        av.save_pretrained(Path(cfg.out) / "av")
        ar.save_pretrained(Path(cfg.out) / "ar")
        write_pair_meta(cfg.out)
    return {k: v for k, v in (metrics.rows[-1] if metrics and metrics.rows else {}).items() if isinstance(v, float)}
