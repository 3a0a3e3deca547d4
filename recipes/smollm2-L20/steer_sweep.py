"""Eval's steering suite alone, on any NLA and alpha grid, with the no-NLA word-residual baseline beside each
setting (the form and alpha are chosen on the 8 development cases, then read on the 8 test cases and the rhyme).
Session 19 wrote `reports/smollm2-135m-L20/v7/steering_baseline.log` with the shipped v7 and alphas 0.1-2:
    .venv/bin/python recipes/smollm2-L20/steer_sweep.py smollm2-135m-L20 0.1,0.25,0.5,1,2"""

import sys

import nlakit.eval as ev
from nlakit.config import EvalConfig
from nlakit.nla import NLA

nla = NLA.from_pretrained(sys.argv[1], dtype="auto")
alphas = tuple(float(a) for a in sys.argv[2].split(","))
r = ev.steering_suite(nla, EvalConfig(out="-", steer_alphas=alphas))
for k, v in r["sweep"].items():
    rhyme = v["cases"][-1]
    print(
        f"{k} {v['wins']}/{v['n']} {v['shift_mean']:.2f} baseline {v['baseline_wins']}/{v['n']} "
        f"{v['baseline_shift_mean']:.2f} rhyme {rhyme['win']} {rhyme['shift']:.2f} {rhyme['top_token_steered']!r} "
        f"baseline {rhyme['baseline_win']} {rhyme['shift_baseline']:.2f}"
    )
print("chosen on the development cases:", r["best"], r["dev"][r["best"]])
