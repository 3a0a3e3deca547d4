"""Extending finished runs (`continue`), and epoch-sized SFT."""

from __future__ import annotations

import json

from conftest import sft_config
from nlakit.dataset import load_pairs
from nlakit.train.sft import total_steps
from nlakit.train.sft_ar import train_ar


def test_epochs_size_the_run(tiny_pairs, tmp_path):
    n = len(load_pairs(tiny_pairs["train"], "explanation").texts)
    cfg = sft_config(tiny_pairs, tmp_path, epochs=1.0, batch_size=16)
    assert total_steps(cfg, n) == -(-n // 16)  # every pair once, the last batch partly from the next epoch
    assert total_steps(sft_config(tiny_pairs, tmp_path, max_steps=7), n) == 7


def test_a_finished_run_continues_with_a_larger_max_steps(tiny_pairs, tmp_path):
    train_ar(sft_config(tiny_pairs, tmp_path, max_steps=4, save_every=2, eval_every=100, log_every=1))
    # no run state edited by hand: the same out folder and a larger max_steps resume from the last checkpoint
    train_ar(sft_config(tiny_pairs, tmp_path, max_steps=6, save_every=2, eval_every=100, log_every=1))
    rows = [json.loads(ln) for ln in (tmp_path / "train_ar" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "train_ar" / "checkpoints" / "step_0000006").is_dir()
