"""RL on `tiny`, starting from the shared SFT'd NLA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

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


def test_rl_reward_rises(nla_dir, tiny_pairs, tmp_path):
    train_rl(_cfg(nla_dir, tiny_pairs, tmp_path, max_steps=30, save_every=30, length_penalty=0.0))
    rows = [json.loads(ln) for ln in (tmp_path / "train_rl" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["reward"] for r in rows[:8]) / 8
    last = sum(r["reward"] for r in rows[-8:]) / 8
    assert last > first, (first, last)
    assert {"reward", "fve_nrm", "length", "kl", "failed", "entropy"} <= set(rows[0])
    assert (tmp_path / "train_rl" / "curves.png").is_file()
    nla = NLA.from_pretrained(tmp_path, dtype="float32")
    assert nla.av.meta.stage == "rl" and len(nla.verbalize(torch.randn(2, 64), max_new_tokens=8)) == 2


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
