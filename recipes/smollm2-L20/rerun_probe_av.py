"""The quote-rerun read of the shipped AV's own explanations: does rerunning the words the AV quotes through the
target beat the shipped AR reading the whole explanation?

Rows: the AR-adaptation pairs (the shipped AV's greedy text for 1,377 training and 330 held-out mixed activations:
wiki, chat, code, news, instructions). Features, each the target's layer-20 state at the last token of a fresh run:
the clause the explanation quotes, and the final token it names. A ridge map (lambda chosen by 5-fold CV on the
training rows) takes features to the vector; scored by fve_nrm on the held-out rows, against the shipped AR there.

    .venv/bin/python recipes/smollm2-L20/rerun_probe_av.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from rerun_probe import apply, rerun, unit  # this folder is on sys.path when the script runs

from nlakit import dataset as ds
from nlakit.maths import fve_nrm, mse_nrm
from nlakit.nla import NLA

R = Path("runs/smollm2-L20")
TOKEN = re.compile(r'"(.*?)" (?:is|,|;)')
LAMS = [1, 3, 10, 30, 100, 300, 1000]


def clause_and_token(explanation: str) -> tuple[str, str]:
    """The quoted clause (between the first and last quote mark of the second paragraph: the clause may hold quote
    marks itself) and the final token the third paragraph names."""
    paras = [p for p in explanation.split("\n\n") if p.strip()]
    p2 = paras[1] if len(paras) > 1 else explanation
    i, j = p2.find('"'), p2.rfind('"')
    clause = p2[i + 1 : j] if j > i else p2[i + 1 :]  # an unclosed quote runs to the paragraph's end
    m = TOKEN.search(paras[2]) if len(paras) > 2 else None
    token = m.group(1) if m else (clause.split() or [clause])[-1]
    return clause, token


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    x1 = np.hstack([x, np.ones((len(x), 1))])
    reg = lam * np.eye(x1.shape[1])
    reg[-1, -1] = 0
    return np.linalg.solve(x1.T @ x1 + reg, x1.T @ y)


def score(pred: np.ndarray, gold: np.ndarray, rawvar: float) -> float:
    return float(fve_nrm(mse_nrm(torch.from_numpy(pred), torch.from_numpy(gold)).mean(), rawvar))


def cv_lambda(x: np.ndarray, y: np.ndarray, rawvar: float) -> float:
    folds = np.array_split(np.random.default_rng(0).permutation(len(x)), 5)
    best = None
    for lam in LAMS:
        s = np.mean(
            [score(apply(ridge_fit(np.delete(x, f, 0), np.delete(y, f, 0), lam), x[f]), y[f], rawvar) for f in folds]
        )
        best = max(best or (s, lam), (s, lam))
    return best[1]


def main() -> None:
    torch.manual_seed(0)
    nla = NLA.from_pretrained("src/nlakit/assets/nla/smollm2-135m-L20")
    rawvar = nla.rawvar
    data = {s: ds.read_table(R / f"ar_adapt3_{s}/train") for s in ("train", "val")}
    gold = {s: unit(torch.from_numpy(ds.vectors_of(t))) for s, t in data.items()}
    expl = {s: t.column("explanation").to_pylist() for s, t in data.items()}
    feats: dict[str, dict[str, np.ndarray]] = {}
    for s in data:
        parts = [clause_and_token(e) for e in expl[s]]
        feats[s] = {
            "clause": unit(rerun(nla, [c for c, _ in parts])),
            "token": unit(rerun(nla, [t for _, t in parts])),
            "ar": unit(nla.reconstruct(expl[s])),
        }
        print(s, "features done", flush=True)
    out = {"rows": {s: len(expl[s]) for s in data}, "ar_alone": score(feats["val"]["ar"], gold["val"], rawvar)}
    print("shipped AR alone", round(out["ar_alone"], 3), flush=True)
    for combo in (["clause"], ["token"], ["clause", "token"], ["ar"], ["ar", "clause"], ["ar", "clause", "token"]):
        x = {s: np.hstack([feats[s][c] for c in combo]) for s in data}
        lam = cv_lambda(x["train"], gold["train"], rawvar)
        val = score(apply(ridge_fit(x["train"], gold["train"], lam), x["val"]), gold["val"], rawvar)
        out["+".join(combo)] = {"lambda_cv": lam, "val_fve_nrm": val}
        print("+".join(combo), lam, round(val, 3), flush=True)
    Path("reports/smollm2-135m-L20/rerun_probe_av.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
