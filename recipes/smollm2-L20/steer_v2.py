"""Text-edit steering of an NLA alone, with eval's protocol: the form and alpha are chosen on 8 development cases,
then read on the 8 test cases and the rhyme. Usage:
    .venv/bin/python recipes/smollm2-L20/steer_v2.py [NLA] [OUT_JSON] [ALPHAS]
v2 (session 4): NLA v2, reports/smollm2-135m-L20/v2/steering.json, 0.1,0.15,0.25,0.35,0.5,1 (a finer grid).
v5 (session 12): the package, reports/smollm2-135m-L20/v5best8/steering.json, eval's grid (0.25,0.5,1,2)."""

import json
import sys

from nlakit.config import EvalConfig
from nlakit.eval import steering_suite
from nlakit.io import atomic_write_text
from nlakit.nla import NLA

src = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-L20"
out = sys.argv[2] if len(sys.argv) > 2 else "reports/smollm2-135m-L20/v2/steering.json"
alphas = tuple(float(a) for a in sys.argv[3].split(",")) if len(sys.argv) > 3 else EvalConfig.steer_alphas
nla = NLA.from_pretrained(src, dtype="auto")
r = steering_suite(nla, EvalConfig(out="-", steer_alphas=alphas))
best = r["sweep"][r["best"]]
summary = {
    "chosen": r["best"],
    "dev": {k: f"{v['wins']}/{v['n']}" for k, v in r["dev"].items()},
    "test": {k: f"{v['wins']}/{v['n']}" for k, v in r["sweep"].items()},
    "test_cases_at_chosen": [
        (c["concept"], c["win"], round(c["shift"], 3), round(c["shift_random_max"], 3), c["top_token_steered"])
        for c in best["cases"]
    ],
}
print(json.dumps(summary, indent=1))
atomic_write_text(out, json.dumps({**summary, "full": r}, indent=1))
