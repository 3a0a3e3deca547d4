"""RL on `tiny`, starting from the shared SFT'd NLA."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from nlakit.maths import mse_nrm
from nlakit.nla import NLA
from nlakit.train.rl import RLConfig, group_advantages, policy_loss, train_rl


def _cfg(nla_dir, pairs, out, **kw) -> RLConfig:
    base = dict(
        data=str(pairs["train"]),
        nla=str(nla_dir[0]),
        out=str(out),
        group_size=4,
        prompts_per_step=4,
        max_new_tokens=40,
        av_lr=3e-4,
        ar_lr=1e-3,
        max_steps=4,
        save_every=2,
        eval_every=1000,
        autocast="none",
        log_every=1,
    )
    base.update(kw)
    return RLConfig(**base)


def test_group_advantages_and_failed_never_advantaged():
    r = torch.tensor([1.0, 2.0, 3.0, -2.0, 0.5, 0.5, 0.5, 0.5])
    failed = torch.tensor([False, False, False, True, False, False, False, False])
    adv = group_advantages(r, 4, failed)
    assert adv[3] <= 0 and adv[2] > adv[1] > adv[0]
    assert torch.allclose(adv[4:], torch.zeros(4))  # identical rewards -> no signal
    # a failed sample that would be above its group's mean is clamped to 0
    adv2 = group_advantages(torch.tensor([-3.0, -3.0, -2.0, -3.0]), 4, torch.tensor([False, False, True, False]))
    assert adv2[2] == 0


def test_policy_loss_is_ppo_clip_plus_kl():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    valid = torch.ones(1, 2, dtype=torch.bool)
    loss, kl = policy_loss(logp, logp.detach(), logp.detach(), torch.tensor([1.0]), valid, 0.2, 0.01, "k1")
    assert loss.item() == pytest.approx(-1.0) and kl.item() == pytest.approx(0.0)
    loss.backward()
    # ascent on advantaged tokens (-1/2 each) plus the k1 KL pull (+0.01/2 each)
    assert torch.allclose(logp.grad, torch.tensor([[-0.495, -0.495]]))
    # ratio beyond 1+eps with positive advantage is clipped: no gradient
    old = logp.detach() - 1.0
    lp = logp.detach().clone().requires_grad_(True)
    loss2, _ = policy_loss(lp, old, lp.detach(), torch.tensor([1.0]), valid, 0.2, 0.0, "k1")
    loss2.backward()
    assert torch.allclose(lp.grad, torch.zeros(1, 2))


def test_k1_gradient_does_not_read_the_reference():
    """Why the reference pass can be skipped under k1 (`kl_every`): the loss's gradient is the same whatever the
    reference's log-probs are, and the same without them; k3's is not, so it refuses to run without them."""
    g = torch.Generator().manual_seed(0)
    logp0 = torch.randn(3, 5, generator=g) - 2
    valid = torch.rand(3, 5, generator=g) > 0.2
    adv = torch.randn(3, generator=g)
    grads = []
    for ref in (logp0 - 0.3, torch.randn(3, 5, generator=g) - 2, None):
        logp = logp0.clone().requires_grad_(True)
        loss, kl = policy_loss(logp, logp.detach(), ref, adv, valid, 0.2, 0.05, "k1")
        assert (kl is None) == (ref is None)
        loss.backward()
        grads.append(logp.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)
    torch.testing.assert_close(grads[0], grads[2], atol=0, rtol=0)
    logp = logp0.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="k3"):
        policy_loss(logp, logp.detach(), None, adv, valid, 0.2, 0.05, "k3")
    a, _ = policy_loss(logp, logp.detach(), logp0 - 0.3, adv, valid, 0.2, 0.05, "k3")
    b, _ = policy_loss(logp, logp.detach(), logp0 + 0.3, adv, valid, 0.2, 0.05, "k3")
    assert not torch.allclose(torch.autograd.grad(a, logp)[0], torch.autograd.grad(b, logp)[0])


def test_rl_update_moves_the_policy_toward_advantaged_samples(nla_dir, tiny_pairs, tmp_path):
    """One GRPO update raises the mean token log-prob of the samples with positive advantage against those with
    negative advantage: sum_i adv_i * delta logp_i > 0. A first-order fact of a small step (Adam's first step moves
    every weight against its gradient's sign), so it holds on every CPU and thread count, unlike a reward trajectory
    whose reward model (the live AR) learns at the same time."""
    from nlakit.generation import SamplingConfig
    from nlakit.train.rl import av_loss, optimizer_step, rewards, setup

    run, _ = setup(_cfg(nla_dir, tiny_pairs, tmp_path, av_lr=1e-5, kl_coef=0.0))
    gold = run.data.vectors[:4].repeat_interleave(4, dim=0)
    run.av.model.eval()
    rollout = run.av.rollout(gold, SamplingConfig(40, temperature=1.0, seed=0))
    reward, _, ok, _ = rewards(run, rollout, gold)
    adv = group_advantages(reward, 4, ~ok)
    assert adv.abs().sum() > 0  # the samples differ, so there is something to learn from

    def mean_logp() -> torch.Tensor:
        with torch.no_grad():
            lp = run.av.token_logprobs(gold, rollout.ids, rollout.mask, rollout.labels)
        return lp.sum(1) / rollout.valid.sum(1).clamp_min(1)

    def update() -> None:
        run.av.model.train()
        loss, _, _ = av_loss(run, rollout, gold, adv)
        loss.backward()
        optimizer_step(run, run.av_params)
        run.av.model.eval()

    before = mean_logp()
    update()
    delta = mean_logp() - before
    assert float((adv * delta).sum()) > 0, (adv, delta)
    # and the direction is not noise: the best sample of every group gains against the worst
    best, worst = reward.view(4, 4).argmax(1), reward.view(4, 4).argmin(1)
    rows = torch.arange(4) * 4
    gap = float((delta[rows + best] - delta[rows + worst]).mean())
    assert gap > 0
    # a few more updates on the same samples keep learning (optimisation of fixed data: no sampling noise)
    for _ in range(4):
        update()
    delta5 = mean_logp() - before
    assert float((adv * delta5).sum()) > 2 * float((adv * delta).sum()) > 0
    assert float((delta5[rows + best] - delta5[rows + worst]).mean()) > 2 * gap


def test_rl_run_writes_metrics_curves_and_an_nla(nla_dir, tiny_pairs, tmp_path):
    train_rl(_cfg(nla_dir, tiny_pairs, tmp_path, max_steps=4, save_every=4, ar_updates=2, kl_every=2))
    rows = [json.loads(ln) for ln in (tmp_path / "train_rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"reward", "fve_nrm", "length", "failed", "entropy", "ar_loss"} <= set(rows[0])
    assert ["kl" in r for r in rows] == [False, True, False, True]  # k1: the reference pass runs every 2nd step
    assert (tmp_path / "train_rl" / "curves.png").is_file()
    nla = NLA.from_pretrained(tmp_path, dtype="float32")
    assert nla.av.meta.stage == "rl" and len(nla.verbalize(torch.randn(2, 64), max_new_tokens=8)) == 2


def test_rl_with_a_frozen_ar_trains_only_the_av(nla_dir, tiny_pairs, tmp_path):
    """ar_updates=0: the AV learns against a fixed critic; the written AR is the source AR, weight for weight."""
    train_rl(_cfg(nla_dir, tiny_pairs, tmp_path, max_steps=2, save_every=2, ar_updates=0))
    src, out = NLA.from_pretrained(nla_dir[0], dtype="float32"), NLA.from_pretrained(tmp_path, dtype="float32")
    for (name, a), (_, b) in zip(src.ar.named_parameters(), out.ar.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    moved = [not torch.equal(a, b) for a, b in zip(src.av.model.parameters(), out.av.model.parameters(), strict=True)]
    assert any(moved)
    rows = [json.loads(ln) for ln in (tmp_path / "train_rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["ar_loss"] for r in rows] == [0.0, 0.0]


def test_rl_refuses_negative_ar_updates(nla_dir, tiny_pairs, tmp_path):
    from nlakit.errors import NlakitError

    with pytest.raises(NlakitError, match="ar_updates"):
        train_rl(_cfg(nla_dir, tiny_pairs, tmp_path, ar_updates=-1))


def test_rl_resume_equals_uninterrupted(nla_dir, tiny_pairs, tmp_path):
    train_rl(_cfg(nla_dir, tiny_pairs, tmp_path / "a", max_steps=4))
    train_rl(_cfg(nla_dir, tiny_pairs, tmp_path / "b", max_steps=2))
    train_rl(_cfg(nla_dir, tiny_pairs, tmp_path / "b", max_steps=4))
    a = load_file(tmp_path / "a" / "train_rl" / "checkpoints" / "step_0000004" / "trainable.safetensors")
    b = load_file(tmp_path / "b" / "train_rl" / "checkpoints" / "step_0000004" / "trainable.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_rl_two_process_ddp(nla_dir, tiny_pairs, tmp_path):
    code = (
        "import sys; from nlakit.train.rl import RLConfig, train_rl\n"
        f"train_rl(RLConfig(data={str(tiny_pairs['train'])!r}, nla={str(nla_dir[0])!r}, out={str(tmp_path)!r},"
        " group_size=2, prompts_per_step=4, max_new_tokens=16, max_steps=2, save_every=2, autocast='none'))\n"
    )
    script = tmp_path / "run_rl.py"
    script.write_text(code)
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", str(script)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(ln) for ln in (tmp_path / "train_rl" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert (tmp_path / "av" / "nla_meta.yaml").is_file()


def test_the_first_ar_update_reuses_the_reward_forward(nla_dir, tiny_pairs, tmp_path):
    """The reward's AR forward, kept with its graph, gives the same rewards as scoring without one, and the same AR
    gradients as a fresh `AR.loss` over the completed samples (so the step skips one AR forward, nothing else)."""
    from nlakit.generation import SamplingConfig
    from nlakit.train.rl import ar_batch, reuses_reward_forward, rewards, setup

    run, _ = setup(_cfg(nla_dir, tiny_pairs, tmp_path))
    assert reuses_reward_forward(run)
    gold = run.data.vectors[:4].repeat_interleave(4, dim=0)
    rollout = run.av.rollout(gold, SamplingConfig(40, temperature=1.0, seed=0))
    plain, plain_mse, ok, none = rewards(run, rollout, gold)
    kept, kept_mse, _, pred = rewards(run, rollout, gold, keep_graph=True)
    assert none is None and pred is not None and pred.requires_grad and 0 < int(ok.sum()) == pred.shape[0]
    torch.testing.assert_close(kept, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kept_mse, plain_mse, atol=1e-5, rtol=1e-5)
    texts, target = ar_batch(run, rollout, gold, ok, 0)
    params = [p for p in run.ar.parameters() if p.requires_grad]

    def grads(loss):
        run.ar.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in params]

    reused = grads(mse_nrm(pred, target, run.ar.meta.mse_scale).mean())
    for a, b in zip(reused, grads(run.ar.loss(texts, target)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # paraphrased AR batches differ from the scored texts: no reuse there
    run.cfg.paraphrase_aug = True
    assert not reuses_reward_forward(run)


def test_rl_on_lora_adapters_keeps_the_sft_policy_as_reference(tiny_pairs, tmp_path):
    """With LoRA checkpoints the reference is the SFT policy, merged into a plain frozen copy: it scores exactly as
    the SFT AV does, stays put while the live adapters move, and the run writes a loadable adapter NLA."""
    from conftest import SHORT_AV_TEMPLATE, sft_config
    from nlakit.av import AV
    from nlakit.generation import SamplingConfig
    from nlakit.train.rl import _reference_policy, av_loss, optimizer_step, rewards, setup
    from nlakit.train.sft_ar import train_ar
    from nlakit.train.sft_av import train_av

    src = tmp_path / "sft"
    kw = dict(lora=True, lora_r=4, lora_alpha=8, max_steps=3, eval_every=3, save_every=3, lr=1e-2)
    train_ar(sft_config(tiny_pairs, src, **kw))
    train_av(sft_config(tiny_pairs, src, av_template=SHORT_AV_TEMPLATE, **kw))
    run, _ = setup(_cfg((src,), tiny_pairs, tmp_path / "rl", av_lr=1e-2))
    gold = run.data.vectors[:4].repeat_interleave(4, dim=0)
    run.av.model.eval()
    rollout = run.av.rollout(gold, SamplingConfig(20, temperature=1.0, seed=0))
    sft = AV.from_pretrained(src / "av", dtype="float32")

    def logp(av, ctx=None):
        with torch.no_grad(), ctx or contextlib.nullcontext():
            return av.token_logprobs(gold, rollout.ids, rollout.mask, rollout.labels)

    expected = logp(sft)
    torch.testing.assert_close(logp(run.av, run.reference()), expected, atol=1e-5, rtol=1e-5)
    with _reference_policy(run.av, src / "av", torch.bfloat16)():  # bf16 weights, fp32 buffers (rotary frequencies)
        assert {p.dtype for p in run.av.model.parameters()} == {torch.bfloat16}
        assert {b.dtype for b in run.av.model.buffers() if b.is_floating_point()} == {torch.float32}
    reward, _, ok, _ = rewards(run, rollout, gold)
    run.av.model.train()
    loss, _, _ = av_loss(run, rollout, gold, group_advantages(reward, 4, ~ok))
    loss.backward()
    optimizer_step(run, run.av_params)
    assert (logp(run.av) - expected).abs().max() > 1e-3  # the live adapters moved
    torch.testing.assert_close(logp(run.av, run.reference()), expected, atol=1e-5, rtol=1e-5)
    train_rl(_cfg((src,), tiny_pairs, tmp_path / "rl", max_steps=2, save_every=2))
    out = NLA.from_pretrained(tmp_path / "rl", dtype="float32")
    assert (tmp_path / "rl" / "av" / "adapter_model.safetensors").is_file() and out.av.meta.stage == "rl"
