"""RL recipe: GRPO for the AV with the live AR as reward model, and the AR trained on the same fresh explanations.

Each step (reference §3.3, scaled to CPU sizes):
1. take `prompts_per_step` activations; sample `group_size` explanations for each (temperature 1, length cap);
2. reward = -mse_nrm(AR(explanation), v) from the AR as it stands (or -log mse); a sample with no closing tag or
   that hit the cap is failed: reward -2 (the orthogonal value) and its advantage is never positive;
3. advantages = (r - group mean) / (group std + 1e-6);
4. AV loss = PPO-clipped policy loss (eps 0.2) + kl_coef * KL(AV || frozen SFT AV), per-sample token mean;
5. AR loss = mse_nrm on the completed samples (optionally also on paraphrases of them, which denies the pair
   steganographic side channels); both updates, one optimizer step per rollout.
The frozen reference AV is a plain copy of the SFT weights (LoRA merged), in the autocast dtype, built once: the KL
pass needs no gradient, so no adapters and no fp32 master weights. Full-weight checkpoints are trained in full.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nlakit.ar import AR
from nlakit.av import AV, Rollout
from nlakit.config import RLConfig, SamplingConfig, dump_config
from nlakit.dataset import Pairs, load_pairs
from nlakit.errors import NlakitError
from nlakit.maths import fve_nrm, keyed_seed, mse_nrm, rawvar_baseline
from nlakit.models import resolve_dtype
from nlakit.nla import resolve_nla_path, score_texts, write_pair_meta
from nlakit.paraphrase import paraphrase
from nlakit.train import dist
from nlakit.train.loop import (
    Metrics,
    autocast_context,
    autocast_dtype,
    batch_indices,
    has_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    run_steps,
    save_checkpoint,
    start_run,
)

FAILED_REWARD = -2.0
MAX_AR_TOKENS = 300  # an explanation longer than this with the AR template is a failed sample (runaway text)


def group_advantages(rewards: torch.Tensor, group_size: int, failed: torch.Tensor) -> torch.Tensor:
    """GRPO: standardise within each group (unbiased std); failed samples are never advantaged."""
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=True) + 1e-6)
    adv = adv.view(-1)
    return torch.where(failed, adv.clamp_max(0.0), adv)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    adv: torch.Tensor,
    valid: torch.Tensor,
    clip_eps: float,
    kl_coef: float,
    kl_type: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PPO-clipped surrogate plus KL to the reference, token mean per sample then mean over samples; also the KL's
    mean. `ref_logp` None (k1 only): the KL term keeps its gradient, kl_coef * grad log p, which does not depend on
    the reference, and its mean is not known (None)."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = -torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    if ref_logp is None and kl_type != "k1":
        raise ValueError("the k3 KL needs the reference's log-probs")
    delta = (logp.detach() if ref_logp is None else ref_logp) - logp
    kl = -delta if kl_type == "k1" else torch.exp(delta) - delta - 1
    per_token = (surrogate + kl_coef * kl) * valid
    n = valid.sum(1).clamp_min(1)
    kl_mean = None if ref_logp is None else ((kl * valid).sum(1) / n).mean()
    return (per_token.sum(1) / n).mean(), kl_mean


def _reference_policy(av: AV, path: Path, dtype: torch.dtype | None):
    """A context manager under which `av` computes with the frozen SFT policy: a plain copy of the SFT weights (LoRA
    merged) in `dtype` (None: the weights' own), built once. The KL term reads it without gradient, so it needs no
    adapters and no fp32 master weights: in bf16 where the update autocasts to bf16 anyway, its pass skips the
    adapters' matmuls and the weights' casts. k1's gradient does not depend on the reference's value; k3's does, and
    reads bf16 rounding in it (its log-probs differ from an autocast pass's by ~0.02 nats per token)."""
    frozen = copy.deepcopy(av.model)
    if hasattr(frozen, "peft_config"):
        frozen.load_adapter(str(path), adapter_name="ref", is_trainable=False)
        frozen.set_adapter("ref")
        frozen = frozen.merge_and_unload(adapter_names=["ref"])
    frozen.eval().requires_grad_(False)
    for p in frozen.parameters() if dtype else ():  # parameters only: rotary frequencies lose positions in bf16
        p.data = p.data.to(dtype)

    @contextlib.contextmanager
    def swap():
        live, av.model = av.model, frozen
        try:
            yield
        finally:
            av.model = live

    return swap


def step_seed(seed: int, step: int, rank: int) -> int:
    return keyed_seed(seed, step, rank, nbytes=4)


@dataclass
class RLRun:
    """Everything a step touches, built once by `setup` (torchtune's recipe shape: setup, train, cleanup)."""

    cfg: RLConfig
    av: AV
    ar: AR
    reference: Callable[[], contextlib.AbstractContextManager]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    data: Pairs
    val: Pairs | None
    rawvar: float
    run_dir: Path
    rank: int
    world: int
    rollout_dtype: torch.dtype

    @property
    def av_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.av.model.parameters() if p.requires_grad]

    @property
    def ar_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.ar.parameters() if p.requires_grad]

    @property
    def weights(self) -> torch.nn.ModuleDict:
        """What a checkpoint holds (its parameter names are the checkpoint format: keep them)."""
        return torch.nn.ModuleDict({"av": self.av.model, "ar": self.ar})


def setup(cfg: RLConfig) -> tuple[RLRun, int]:
    """Load the SFT NLA, the frozen reference policy, data and optimizer; resume from the last checkpoint.
    Returns the run and the step to start from."""
    if cfg.group_size < 2:
        raise NlakitError("group_size must be at least 2 (GRPO compares samples within a group)")
    if cfg.ar_updates < 0:
        raise NlakitError("ar_updates must be 0 (a frozen AR) or more")
    if cfg.kl_type not in ("k1", "k3"):
        raise NlakitError(f"kl_type must be k1 or k3, not {cfg.kl_type!r}")
    if cfg.kl_every < 1:
        raise NlakitError("kl_every must be 1 (measure the KL every step) or more")
    try:  # a bad name fails before anything loads
        rollout_dtype = resolve_dtype(cfg.rollout_dtype, cfg.device)
    except NlakitError as e:
        raise NlakitError(f"rollout_dtype: {e}") from None
    rank, world = dist.init(cfg.device)
    if cfg.prompts_per_step < world:
        raise NlakitError(f"prompts_per_step={cfg.prompts_per_step} is less than the {world} processes; raise it")
    src = resolve_nla_path(cfg.nla)
    run_dir = Path(cfg.out) / "train_rl"
    start_run(run_dir, dump_config(cfg), cfg.seed + rank)
    av = AV.from_pretrained(src / "av", device=cfg.device, dtype=cfg.dtype, trainable=True)
    ar = AR.from_pretrained(src / "ar", device=cfg.device, dtype=cfg.dtype, trainable=True)
    if cfg.ar_updates:
        ar.value_head.weight.requires_grad_(True)
    else:  # a frozen critic: no AR gradients, and its parameters stay out of the optimizer
        ar.requires_grad_(False)
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
    run = RLRun(
        cfg,
        av,
        ar,
        _reference_policy(av, src / "av", autocast_dtype(cfg.autocast, cfg.device)),
        opt,
        sched,
        data,
        val,
        rawvar_baseline(data.vectors),
        run_dir,
        rank,
        world,
        rollout_dtype,
    )
    ckpt = latest_checkpoint(run_dir)
    start = load_checkpoint(ckpt, run.weights, opt, sched)["step"] if ckpt is not None else 0
    return run, start


def rewards(
    run: RLRun, rollout: Rollout, gold: torch.Tensor, keep_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(reward, mse_nrm, ok, pred): -mse_nrm from the live AR (or -log mse); failed samples, and explanations too
    long for the AR, get the orthogonal value and are never advantaged. `pred` is the AR's reconstruction of the
    completed samples with its graph when `keep_graph`: the first AR update's loss is the same mse_nrm over the same
    texts, so it reuses this forward instead of running the AR again."""
    cfg = run.cfg
    ok = rollout.ok & run.ar.fits(rollout.explanations, MAX_AR_TOKENS)
    pred = None
    with torch.set_grad_enabled(keep_graph), autocast_context(cfg.autocast, cfg.device):
        if keep_graph:
            mse = torch.full((len(ok),), 2.0)
            sel = ok.nonzero()[:, 0]
            if len(sel):
                pred = run.ar(*run.ar.encode([rollout.explanations[i] for i in sel.tolist()]))
                mse[sel] = mse_nrm(pred.detach(), gold[sel].to(pred.device), run.ar.meta.mse_scale).cpu()
        else:
            texts = [e if k else "" for e, k in zip(rollout.explanations, ok, strict=True)]
            mse = score_texts(run.ar, texts, gold)["mse_nrm"]
    reward = -torch.log(mse.clamp_min(1e-8)) if cfg.reward == "log_mse" else -mse
    fail_value = -math.log(2.0) if cfg.reward == "log_mse" else FAILED_REWARD
    reward = torch.where(ok, reward - cfg.length_penalty * rollout.lengths, torch.full_like(reward, fail_value))
    return reward, mse, ok, pred


def reuses_reward_forward(run: RLRun) -> bool:
    """Whether the first AR update can reuse the reward's AR forward: one update on exactly the scored texts (no
    paraphrases added), and no active dropout, so the training-mode forward equals the scoring one."""
    cfg = run.cfg
    dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in run.ar.modules()) or any(
        float(getattr(m.config, "attention_dropout", 0) or 0) > 0 for m in run.ar.modules() if hasattr(m, "config")
    )
    return cfg.ar_updates >= 1 and not cfg.paraphrase_aug and not dropout


def measures_kl(cfg: RLConfig, step: int) -> bool:
    """Whether step `step` runs the reference pass: every step under k3, whose gradient reads it; under k1 only
    every `kl_every`-th step, where it measures the logged KL (k1's gradient does not depend on it)."""
    return cfg.kl_type != "k1" or (step + 1) % cfg.kl_every == 0


def av_loss(
    run: RLRun, rollout: Rollout, gold: torch.Tensor, adv: torch.Tensor, with_kl: bool = True
) -> tuple[torch.Tensor, ...]:
    """PPO-clipped policy loss + KL to the frozen SFT AV (one update per rollout, so old = current, detached), and
    the KL's mean (None without `with_kl`: the reference pass is skipped, see `measures_kl`) and the entropy."""
    cfg, av = run.cfg, run.av
    autocast = autocast_context(cfg.autocast, cfg.device)
    ref_logp = None
    if with_kl:
        with torch.no_grad(), autocast, run.reference():
            ref_logp = av.token_logprobs(gold, rollout.ids, rollout.mask, rollout.labels)
    with autocast:
        logp, entropy = av.token_logprobs(gold, rollout.ids, rollout.mask, rollout.labels, with_entropy=True)
        loss, kl = policy_loss(
            logp, logp.detach(), ref_logp, adv, rollout.valid, cfg.clip_eps, cfg.kl_coef, cfg.kl_type
        )
    return loss, kl, entropy


def ar_batch(run: RLRun, rollout: Rollout, gold: torch.Tensor, ok: torch.Tensor, step: int):
    """The AR's training texts: the completed samples, and (with paraphrase_aug) a meaning-preserving rewrite of
    each, which denies the pair a steganographic channel in wording or order."""
    sel = ok.nonzero()[:, 0].tolist()
    texts, target = [rollout.explanations[i] for i in sel], gold[sel]
    if run.cfg.paraphrase_aug:
        rng = random.Random(step_seed(run.cfg.seed, step, run.rank))
        texts = texts + [paraphrase(t, rng) for t in texts]
        target = torch.cat([target, target])
    return texts, target


def optimizer_step(run: RLRun, params: list[torch.nn.Parameter]) -> None:
    dist.average_gradients(params)
    torch.nn.utils.clip_grad_norm_(run.av_params, run.cfg.grad_clip)
    torch.nn.utils.clip_grad_norm_(run.ar_params, run.cfg.grad_clip)
    run.opt.step()  # AdamW skips parameters without a gradient: an AR-only step leaves the AV as it is
    run.opt.zero_grad(set_to_none=True)


def train_step(run: RLRun, step: int) -> dict:
    """One GRPO step: rollouts, rewards, AV update, AR update(s). Returns the step's log row."""
    cfg, av, ar = run.cfg, run.av, run.ar
    autocast = autocast_context(cfg.autocast, cfg.device)
    t0 = time.perf_counter()
    idx = batch_indices(len(run.data.texts), cfg.prompts_per_step, step, cfg.seed)[run.rank :: run.world]
    gold = run.data.vectors[idx].repeat_interleave(cfg.group_size, dim=0)

    # 1. rollouts from the current policy
    av.model.eval()
    sampling = SamplingConfig(cfg.max_new_tokens, temperature=cfg.temperature, seed=step_seed(cfg.seed, step, run.rank))
    rollout = av.rollout(gold, sampling, run.rollout_dtype)
    t_gen = time.perf_counter()

    # 2. rewards from the live AR; group-relative advantages
    reuse = reuses_reward_forward(run)
    reward, mse, ok, pred = rewards(run, rollout, gold, keep_graph=reuse)
    adv = group_advantages(reward, cfg.group_size, ~ok).to(av.device)
    t_reward = time.perf_counter()

    # 3. AV update: PPO-clipped policy loss + KL to the frozen SFT AV
    av.model.train()
    loss, kl, entropy = av_loss(run, rollout, gold, adv, with_kl=measures_kl(cfg, step))
    loss.backward()
    t_av = time.perf_counter()

    # 4. AR update(s) on the same fresh explanations; the first shares the optimizer step with the AV's
    ar_loss = torch.tensor(0.0)
    texts, target = ar_batch(run, rollout, gold, ok, step) if cfg.ar_updates else ([], gold[:0])
    for update in range(cfg.ar_updates if texts else 0):
        if update == 0 and pred is not None:
            ar_loss = mse_nrm(pred, target.to(pred.device), ar.meta.mse_scale).mean()
        else:
            with autocast:
                ar_loss = ar.loss(texts, target)
        ar_loss.backward()
        optimizer_step(run, run.av_params + run.ar_params if update == 0 else run.ar_params)
    if not texts:
        optimizer_step(run, run.av_params + run.ar_params)
    run.sched.step()
    now = time.perf_counter()

    stats = dist.mean_scalars(
        {
            "reward": float(reward.mean()),
            "mse_nrm": float(mse[ok].mean()) if ok.any() else 2.0,
            "length": float(rollout.lengths.float().mean()),
            **({"kl": float(kl.detach())} if kl is not None else {}),
            "failed": float((~ok).float().mean()),
            "entropy": float((entropy.sum(1) / rollout.valid.sum(1).clamp_min(1)).mean()),
            "ar_loss": float(ar_loss.detach()),
        }
    )
    row = {"step": step + 1, **stats, "fve_nrm": float(fve_nrm(stats["mse_nrm"], run.rawvar)), "sec": now - t0}
    # where the step's time went (optimizer steps are counted with the AR update)
    row.update(
        sec_generate=t_gen - t0, sec_reward=t_reward - t_gen, sec_av_update=t_av - t_reward, sec_ar_update=now - t_av
    )
    if (step + 1) % cfg.sample_every == 0:
        row["sample"] = {"explanation": rollout.explanations[0], "mse_nrm": float(mse[0]), "ok": bool(ok[0])}
    return row


def evaluate(run: RLRun) -> dict[str, float]:
    """Greedy explanations of the first `eval_rows` val rows, scored by the live AR."""
    run.av.model.eval()
    with autocast_context(run.cfg.autocast, run.cfg.device):
        texts = run.av.verbalize(run.val.vectors, max_new_tokens=run.cfg.max_new_tokens)
        mse = float(score_texts(run.ar, texts, run.val.vectors)["mse_nrm"].mean())
    return {"val_mse_nrm": mse, "val_fve_nrm": float(fve_nrm(mse, run.rawvar))}


def cleanup(run: RLRun) -> None:
    """Write the trained NLA (av/, ar/, pair sidecar) next to the run state."""
    av, ar = run.av, run.ar
    av.meta.stage = ar.meta.stage = "rl"
    # the rollout cap is the AV's training cap: explain/verbalize default to it (ModelMeta.max_new_tokens)
    av.meta.training = {**(av.meta.training or {}), "max_new_tokens": run.cfg.max_new_tokens}
    av.save_pretrained(Path(run.cfg.out) / "av")
    ar.save_pretrained(Path(run.cfg.out) / "ar")
    write_pair_meta(run.cfg.out)


def train_rl(cfg: RLConfig) -> dict[str, float]:
    """Run (or resume, or continue with a larger `max_steps`) the RL recipe; returns the last log row's numbers."""
    run, start = setup(cfg)
    main = run.rank == 0
    metrics = Metrics(run.run_dir / "metrics.jsonl", resume_step=start) if main else None
    plot = ["reward", "fve_nrm", "length", "kl", "failed", "val_fve_nrm"]

    def checkpoint(step: int) -> None:
        if main:
            save_checkpoint(run.run_dir, step, run.weights, run.opt, run.sched)
            metrics.plot(run.run_dir / "curves.png", plot, "RL")
        dist.barrier()

    if start == 0 and run.val is not None and main:  # the SFT starting point, for the curve to be read against
        metrics.log({"step": 0, **evaluate(run)})
    run_steps(
        "rl",
        start,
        cfg.max_steps,
        lambda step: train_step(run, step),
        evaluate=(lambda: evaluate(run)) if run.val is not None else None,
        checkpoint=checkpoint,
        metrics=metrics,
        eval_every=cfg.eval_every,
        log_every=cfg.log_every,
        save_every=cfg.save_every,
        is_main=main,
    )
    if not has_checkpoint(run.run_dir, cfg.max_steps):
        checkpoint(cfg.max_steps)
    if main:
        cleanup(run)
    return {k: v for k, v in (metrics.rows[-1] if metrics and metrics.rows else {}).items() if isinstance(v, float)}
