"""Steering with an edit averaged over several explanations of the same activation, with eval's protocol (the form,
alpha and sample count are chosen on the 8 development cases, then read on the 8 test cases and the rhyme).
Session 19, on the shipped v7: one greedy explanation's edit gives delta = AR(edited) - AR(original), which carries
that one wording's noise as well as the concept. Here the original is the greedy explanation plus k - 1 samples at
temperature 1 (`NLA.candidates`, seeded), each edited the same way, and delta is the mean of the k differences.
With --teacher the one original is the grounded teacher's explanation of the prompt instead of the AV's: whether
an edit of the format's ceiling text steers better says whether the AV's text or the AR's reading is the limit.
Usage: .venv/bin/python recipes/smollm2-L20/steer_samples.py NLA_FOLDER OUT.json [--teacher]"""

import json
import sys

import torch

import nlakit.eval as ev
from nlakit.config import EvalConfig
from nlakit.explainers.grounded import GroundedExplainer
from nlakit.io import atomic_write_text
from nlakit.nla import NLA

TEACHER = "--teacher" in sys.argv
SAMPLES = (1,) if TEACHER else (1, 4, 8)
ALPHAS = (0.1, 0.25, 0.5)


@torch.no_grad()
def prepare(nla, cases, cfg, gen, n_random, k):
    tok = nla.target_tokenizer()
    out = []
    for case in cases:
        prompt, word = case[0], case[1]
        ids, pos, h = ev.steer_case_activation(nla, case)
        if TEACHER:
            texts = teacher.explain([tok.decode(ids[: pos + 1], skip_special_tokens=True)])
        else:
            texts = nla.candidates(h, k, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)[0]
        texts = [t or "(empty)" for t in texts]
        edits = [[ev.edit_toward(t, word, f) for f in ev.EDIT_FORMS] for t in texts]
        rec = torch.stack([nla.reconstruct([t, *e]) for t, e in zip(texts, edits, strict=True)]).float().mean(0)
        rand = torch.randn(n_random, h.shape[-1], generator=gen)
        target = tok.encode(" " + word, add_special_tokens=False)[0]
        first = dict(zip(ev.EDIT_FORMS, edits[0], strict=True))
        word_h = ev.word_residual(nla, ids, pos, word)
        out.append(ev.SteerCase(prompt, word, ids, pos, h, texts[0], first, rec, rand, target, word_h))
    return out


def suite(nla, cfg):
    """eval's steering_suite with the sample count as one more setting chosen on the development cases."""
    dev, test = {}, {}
    for k in SAMPLES:
        dev_cases = prepare(nla, ev.STEER_DEV_CASES, cfg, torch.Generator().manual_seed(cfg.seed + 1), 8, k)
        test_cases = prepare(nla, [*ev.STEER_CASES, ev.RHYME_CASE], cfg, torch.Generator().manual_seed(cfg.seed), 8, k)
        for f in ev.EDIT_FORMS:
            for a in ALPHAS:
                dev[f"{f}@{a:g}/k{k}"] = ev._steer_setting(nla, dev_cases, f, a)
                test[f"{f}@{a:g}/k{k}"] = ev._steer_setting(nla, test_cases, f, a)
        print(k, {key: f"{v['wins']}/{v['n']}" for key, v in dev.items() if key.endswith(f"k{k}")}, flush=True)
    chosen = max(dev, key=lambda key: (dev[key]["wins"], dev[key]["shift_mean"]))
    return chosen, dev, test


nla = NLA.from_pretrained(sys.argv[1], dtype="auto")
teacher = GroundedExplainer(nla.target)
chosen, dev, test = suite(nla, EvalConfig(out="-"))
summary = {
    "chosen": chosen,
    "dev": {k: f"{v['wins']}/{v['n']} {v['shift_mean']:.2f}" for k, v in dev.items()},
    "test": {
        k: f"{sum(c['win'] for c in v['cases'][:8])}/8 ordinary, rhyme {v['cases'][8]['win']} "
        f"{v['cases'][8]['shift']:.2f} {v['cases'][8]['top_token_steered']!r}, mean {v['shift_mean']:.2f}"
        for k, v in test.items()
    },
}
print(json.dumps(summary, indent=1))
atomic_write_text(sys.argv[2], json.dumps({**summary, "full_test": test}, indent=1))
