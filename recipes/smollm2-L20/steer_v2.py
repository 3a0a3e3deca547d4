"""Text-edit steering of the shipped NLA alone (eval's protocol: form and alpha chosen on 8 development cases, then
read on the 8 test cases and the rhyme), on a finer alpha grid than `nla eval`'s default. Writes
reports/smollm2-135m-L20/v2/steering.json. Usage: .venv/bin/python recipes/smollm2-L20/steer_v2.py [NLA]"""

import json
import sys

from nlakit.config import EvalConfig
from nlakit.eval import steering_suite
from nlakit.io import atomic_write_text
from nlakit.nla import NLA

nla = NLA.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-L20", dtype="float32")
cfg = EvalConfig(out="-", steer_alphas=(0.1, 0.15, 0.25, 0.35, 0.5, 1.0))
r = steering_suite(nla, cfg)
best = r["sweep"][r["best"]]
summary = {
    "chosen": r["best"],
    "dev": {k: f"{v['wins']}/{v['n']}" for k, v in r["dev"].items()},
    "test": {k: f"{v['wins']}/{v['n']}" for k, v in r["sweep"].items()},
    "test_cases_at_chosen": [(c["concept"], c["win"], round(c["shift"], 3)) for c in best["cases"]],
}
print(json.dumps(summary, indent=1))
atomic_write_text("reports/smollm2-135m-L20/v2/steering.json", json.dumps({**summary, "full": r}, indent=1))
