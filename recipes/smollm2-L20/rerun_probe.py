"""How much of a layer-20 vector does the target itself rebuild from the last few words of its context?

A question about the AR's design, not an NLA: the AR is the target truncated after layer K, so if an explanation
quotes the words before the token, running the target on that quote alone (a fresh context) puts its layer-K state
at the quote's last token. This measures that state against the real vector, for the last k whole words of the
real context: raw, and through a ridge map fit on training rows (what an AR's value head could learn). It bounds what
a quote-reading AR gets from the quote alone; an explanation adds topic and predictions on top.

    .venv/bin/python recipes/smollm2-L20/rerun_probe.py [--test 300] [--train 1500]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from nlakit import dataset as ds
from nlakit.maths import fve_nrm, mse_nrm, normalize
from nlakit.nla import NLA

KS = [2, 4, 6, 8, 12, 24]


def tail_words(context: str, k: int) -> str:
    """The last k whitespace-separated words, the token's own (possibly partial) word last."""
    return " ".join(context.split()[-k:])


def rerun(nla: NLA, texts: list[str]) -> torch.Tensor:
    """The target's layer-K state at the last token of each text, run alone (an empty text reads as ".")."""
    return torch.stack([nla.activations(t if t.strip() else ".")[1][-1] for t in texts])


def unit(v: torch.Tensor) -> np.ndarray:
    """Rows at norm sqrt(d), as fve_nrm compares them: the map is fit where it is scored."""
    return normalize(v, v.shape[-1] ** 0.5).numpy()


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    x1 = np.hstack([x, np.ones((len(x), 1))])
    return np.linalg.solve(x1.T @ x1 + lam * np.eye(x1.shape[1]), x1.T @ y)


def apply(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))]) @ w


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="runs/smollm2-L20/v1_split")
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--ks", default=",".join(map(str, KS)), help="comma-separated word counts")
    ap.add_argument("--out", default="reports/smollm2-135m-L20/rerun_probe.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    nla = NLA.from_pretrained("src/nlakit/assets/nla/smollm2-135m-L20")
    rawvar = nla.rawvar
    rng = np.random.default_rng(0)
    tables = {}
    for name, n in (("train", args.train), ("test", args.test)):
        t = ds.read_table(Path(args.split) / name)
        tables[name] = t.take(np.sort(rng.permutation(t.num_rows)[:n]))
    gold = {k: torch.from_numpy(ds.vectors_of(t)).float() for k, t in tables.items()}
    ctx = {k: t.column("context").to_pylist() for k, t in tables.items()}
    full = rerun(nla, ctx["test"][:20])  # sanity: the whole context reproduces the stored vector
    check = float(fve_nrm(mse_nrm(full, gold["test"][:20]).mean(), rawvar))
    print(f"whole-context rerun fve {check:.3f} (1.0 = extraction reproduced)", flush=True)
    out: dict = {"rows": {"train": args.train, "test": args.test}, "rawvar": rawvar, "whole_context": check, "k": {}}
    for k in [int(k) for k in args.ks.split(",")]:
        xs = {s: rerun(nla, [tail_words(c, k) for c in ctx[s]]) for s in ("train", "test")}
        raw = float(fve_nrm(mse_nrm(xs["test"], gold["test"]).mean(), rawvar))
        row = {"raw": raw}
        for lam in (1.0, 10.0, 100.0):
            w = ridge(unit(xs["train"]), unit(gold["train"]), lam * args.train / 100)
            pred = torch.from_numpy(apply(w, unit(xs["test"]))).float()
            row[f"ridge_{lam:g}"] = float(fve_nrm(mse_nrm(pred, gold["test"]).mean(), rawvar))
        out["k"][k] = row
        print(k, {a: round(b, 3) for a, b in row.items()}, flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
