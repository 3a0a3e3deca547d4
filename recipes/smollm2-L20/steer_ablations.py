"""Two steering ablations on the shipped NLA, with eval's protocol (chosen on the 8 development cases, read on the 8
test cases and the rhyme; 8 random directions of the same norm per case). Session 14. Usage:
    .venv/bin/python recipes/smollm2-L20/steer_ablations.py recipes/smollm2-L20/logs/steer_ablations_s14.json
- `delta`: which delta = AR(edited) - AR(original) to push along, from 8 candidate explanations of h (the greedy
  one and 7 samples at temperature 1, each edited with eval's `replace`): the greedy one's (eval's rule), the AR's
  pick's, the mean of all 8, the mean of their unit vectors, the mean of the AR's 4 best. Averaging should cancel
  the AR's noise in delta, if noise is what limits the wins.
- `span`: the push added at the last 1 or 3 positions up to the edited token, or at every position of the prompt."""

import json
import sys

import torch

import nlakit.eval as ev
from nlakit.batch import right_pad
from nlakit.config import EvalConfig
from nlakit.io import atomic_write_text
from nlakit.nla import NLA
from nlakit.steer import Edit, ResidualPatch, steering_vector

K, ALPHAS = 8, (0.1, 0.25, 0.5, 1.0)
nla = NLA.from_pretrained("smollm2-135m-L20", dtype="auto")
tok, model, cfg = nla.target_tokenizer(), nla.target_lm(), EvalConfig(out="-")


def prepare(cases, gen):
    out = []
    for case in cases:
        word = case[1]
        ids, pos, h = ev.steer_case_activation(nla, case)
        cands = [c or "(empty)" for c in nla.candidates(h, K, max_new_tokens=cfg.max_new_tokens)[0]]
        rec = nla.reconstruct(cands + [ev.edit_toward(c, word, "replace") for c in cands])
        rand = torch.randn(8, h.shape[-1], generator=gen)  # drawn as eval draws them
        target = tok.encode(" " + word, add_special_tokens=False)[0]
        scores = nla.candidate_scores([cands], h)[0]
        out.append(
            dict(
                word=word, ids=ids, pos=pos, h=h, d=(rec[K:] - rec[:K]).float(), scores=scores, rand=rand, target=target
            )
        )
    return out


def delta(c, rule):
    d, s = c["d"], c["scores"]
    return {
        "greedy": d[0],
        "pick": d[int(s.argmin())],
        "mean": d.mean(0),
        "mean_unit": (d / d.norm(dim=-1, keepdim=True)).mean(0),
        "top4": d[s.argsort()[:4]].mean(0),
    }[rule]


@torch.no_grad()
def score(cases, rule="greedy", span=1, alpha=0.25):
    rows = []
    for c in cases:
        push = steering_vector(c["h"], torch.zeros_like(c["h"]), delta(c, rule)[None], alpha)[0]
        adds = torch.cat(
            [torch.zeros_like(push)[None], push[None], c["rand"] / c["rand"].norm(dim=-1, keepdim=True) * push.norm()]
        )
        positions = range(max(1, c["pos"] - span + 1), c["pos"] + 1) if span else range(1, len(c["ids"]))
        ids, mask = right_pad([c["ids"]] * len(adds), 0)
        with ResidualPatch(model, nla.layer, [Edit(i, p, adds[i], "add") for i in range(len(adds)) for p in positions]):
            logp = torch.log_softmax(
                model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float(), -1
            )
        t = c["target"]
        rows.append(
            {
                "concept": c["word"],
                "win": bool(logp[1, t] > logp[2:, t].max()),
                "shift": float(logp[1, t] - logp[0, t]),
                "top": tok.decode([int(logp[1].argmax())]),
            }
        )
    return rows


dev = prepare(ev.STEER_DEV_CASES, torch.Generator().manual_seed(cfg.seed + 1))
test = prepare([*ev.STEER_CASES, ev.RHYME_CASE], torch.Generator().manual_seed(cfg.seed))
settings = [(r, 1, a) for r in ("greedy", "pick", "mean", "mean_unit", "top4") for a in ALPHAS]
settings += [("greedy", s, a) for s in (3, 0) for a in ALPHAS]
result = {}
for rule, span, alpha in settings:
    d, t = score(dev, rule, span, alpha), score(test, rule, span, alpha)
    key = f"{rule}/span{span or 'all'}@{alpha:g}"
    result[key] = {
        "dev_wins": sum(r["win"] for r in d),
        "test_wins": sum(r["win"] for r in t[:8]),
        "rhyme": t[8],
        "dev_shift_mean": sum(r["shift"] for r in d) / len(d),
    }
    print(key, result[key]["dev_wins"], result[key]["test_wins"], t[8]["win"], t[8]["top"], flush=True)
best = max(result, key=lambda k: (result[k]["dev_wins"], result[k]["dev_shift_mean"]))
out = {"chosen_on_dev": best, **result[best], "all": result}
atomic_write_text(sys.argv[1], json.dumps(out, indent=1) + "\n")
