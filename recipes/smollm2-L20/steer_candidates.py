"""Steering study (session 9, on the shipped v4): is the edit's direction better read from several explanations?
Variants, each with eval's protocol (edit forms x alphas, 8 random directions of the same norm, same seeds):
  greedy: delta from the greedy explanation (what `nla eval` does);
  mean8:  the unit deltas of the greedy text and 7 samples (T=1), averaged: each explanation votes equally;
  pick8:  delta from the AR's pick of those 8 (best of 8).
Writes reports/smollm2-135m-L20/v4/steering_candidates.json.
Usage: .venv/bin/python recipes/smollm2-L20/steer_candidates.py"""

import json
import time

import torch

from nlakit import NLA
from nlakit.config import EvalConfig
from nlakit.eval import (
    EDIT_FORMS,
    RHYME_CASE,
    STEER_CASES,
    STEER_DEV_CASES,
    _steer_prepare,
    _steer_setting,
    edit_toward,
)
from nlakit.io import atomic_write_text

torch.manual_seed(0)

nla = NLA.from_pretrained("src/nlakit/assets/nla/smollm2-135m-L20")
cfg = EvalConfig(out="-", max_new_tokens=120)
K = 8
out = {}
for name, cases, seed in (("dev", STEER_DEV_CASES, 1), ("test", [*STEER_CASES, RHYME_CASE], 0)):
    t = time.time()
    prep = _steer_prepare(nla, cases, cfg, torch.Generator().manual_seed(seed), 8)
    variants = {"greedy": prep, "mean8": [], "pick8": []}
    for p in prep:
        word, h = p.word, p.h
        cands = nla.candidates(h, K, max_new_tokens=cfg.max_new_tokens)[0]
        cands = [c or "(empty)" for c in cands]
        scores = nla.candidate_scores([cands], h)[0]
        texts = []
        for c in cands:
            texts += [c] + [edit_toward(c, word, f) for f in EDIT_FORMS]
        r = nla.reconstruct(texts).view(K, 1 + len(EDIT_FORMS), -1).float()
        d = r[:, 1:] - r[:, :1]  # [K, forms, d]
        dn = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        mean = dn.mean(0)  # unit deltas averaged: each explanation votes equally
        variants["mean8"].append(p._replace(rec=torch.cat([torch.zeros_like(mean[:1]), mean])))
        b = int(scores.argmin())
        variants["pick8"].append(p._replace(original=cands[b], rec=r[b]))
    for v, pp in variants.items():
        for form in EDIT_FORMS:
            for a in cfg.steer_alphas:
                s = _steer_setting(nla, pp, form, a)
                key = f"{name}/{v}/{form}@{a:g}"
                out[key] = {
                    "wins": s["wins"],
                    "n": s["n"],
                    "shift": s["shift_mean"],
                    "rnd": s["shift_random_mean"],
                    "win_cases": [c["concept"] for c in s["cases"] if c["win"]],
                }
                print(key, out[key], flush=True)
    print(name, "took", time.time() - t, flush=True)
atomic_write_text("reports/smollm2-135m-L20/v4/steering_candidates.json", json.dumps(out, indent=1))
