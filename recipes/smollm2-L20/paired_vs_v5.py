"""A candidate NLA against v5 on eval.sh's three held-out sets, with a paired interval: each pair's greedy text
(120-token cap, as eval.sh) read by its own AR at the same positions, per-row mse, 95% interval from resampling
documents. eval.sh's reports give each pair's figure; this gives the difference its interval (its v5 column should
repeat v5best8's greedy figures: 0.387, 0.269, 0.323). Usage:
    .venv/bin/python recipes/smollm2-L20/paired_vs_v5.py runs/smollm2-L20/nla_v6b \
        reports/smollm2-135m-L20/v6b/paired_vs_v5.json
"""

import json
import sys
from pathlib import Path

from nlakit.config import EvalConfig
from nlakit.eval import collect, eval_documents
from nlakit.io import atomic_write_text
from nlakit.maths import paired_bootstrap, rawvar_baseline
from nlakit.nla import NLA

R = "runs/smollm2-L20"
SETS = {
    "wiki_test": dict(corpus="wiki", docs_from="recipes/smollm2-L20/splits/wiki_test.txt", max_positions=300),
    "fiction_reviews": dict(texts=f"{R}/synth_heldout.jsonl", max_positions=120),
    "chat_fresh": dict(texts=f"{R}/synth_chat_s2.jsonl", max_positions=120, positions_per_doc=3),
}


def main(candidate: str, out: str) -> None:
    new, v5 = NLA.from_pretrained(candidate), NLA.from_pretrained(f"{R}/nla_v5")
    result = {"candidate": candidate, "baseline": f"{R}/nla_v5"}
    for name, kw in SETS.items():
        cfg = EvalConfig(out=str(Path(out).parent), max_new_tokens=120, **kw)
        samples, vectors, _ = collect(new, eval_documents(cfg), cfg)
        rawvar = rawvar_baseline(vectors)
        mse = {}
        for tag, nla in (("candidate", new), ("v5", v5)):
            texts = nla.verbalize(vectors, max_new_tokens=120)
            mse[tag] = nla.score(texts, vectors)["mse_nrm"]  # an empty text scores mse 2, as in nla eval
        d, lo, hi = paired_bootstrap(mse["candidate"], mse["v5"], [s.doc_id for s in samples], rawvar)
        fve = {tag: 1 - float(m.mean()) / rawvar for tag, m in mse.items()}
        result[name] = {"n": len(samples), **fve, "candidate_minus_v5": d, "ci95": [lo, hi]}
        print(name, json.dumps(result[name]), flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
