"""Pure maths of the NLA objective. No models, no files: small functions, each tested by hand-computed values.

Conventions (reference §1.6, §3.5): vectors are compared after rescaling both to norm `scale`
(default sqrt(d)), which makes the per-element MSE equal to 2(1 - cos) and independent of d.
"""

from __future__ import annotations

import hashlib
import math

import torch

Tensor = torch.Tensor


def normalize(v: Tensor, scale: float | None) -> Tensor:
    """Rescale each row of `v` to L2 norm `scale` (norm in fp32). `None` passes through; zero rows stay zero."""
    if scale is None:
        return v
    norm = v.float().norm(dim=-1, keepdim=True)
    factor = torch.where(norm > 0, scale / norm.clamp_min(1e-30), torch.zeros_like(norm))
    return (v.float() * factor).to(v.dtype)


def mse_nrm(pred: Tensor, gold: Tensor, scale: float | None = None) -> Tensor:
    """Per-row mean squared difference with both rows at norm `scale` (sqrt(d) if None): equals 2(1 - cos)."""
    s = math.sqrt(pred.shape[-1]) if scale is None else scale
    return (normalize(pred.float(), s) - normalize(gold.float(), s)).pow(2).mean(dim=-1)


def cosine(pred: Tensor, gold: Tensor) -> Tensor:
    """Per-row cosine similarity (0 where either row is zero)."""
    p, g = pred.float(), gold.float()
    denom = p.norm(dim=-1) * g.norm(dim=-1)
    return torch.where(denom > 0, (p * g).sum(-1) / denom.clamp_min(1e-30), torch.zeros_like(denom))


def rawvar_baseline(vectors: Tensor) -> float:
    """Variance of the sqrt(d)-normalised vectors, mean over elements: 1 - |mu|^2 / d. The FVE denominator."""
    v = normalize(vectors.float(), math.sqrt(vectors.shape[-1]))
    return float((v - v.mean(0)).pow(2).mean())


def meannorm_baseline(vectors: Tensor) -> float:
    """MSE of predicting the normalised mean direction: 2(1 - |mu|/sqrt(d)), the best constant normalised guess."""
    d = vectors.shape[-1]
    v = normalize(vectors.float(), math.sqrt(d))
    return float(mse_nrm(v.mean(0, keepdim=True).expand_as(v), v).mean())


def fve_nrm(mse: float | Tensor, rawvar: float) -> float | Tensor:
    """Fraction of variance explained, reference convention: 1 - mse_nrm / rawvar. Can be negative."""
    if rawvar <= 0:
        raise ValueError("rawvar must be positive: all vectors point the same way, so FVE is undefined")
    return 1.0 - mse / rawvar


def keyed_seed(*key: object, nbytes: int = 8) -> int:
    """A seed from a key (sha256 of the parts joined by "|"): the same key gives the same draws on every machine,
    whatever the batch, chunk or process order (document positions, RL steps, generated corpora)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, key)).encode()).digest()[:nbytes], "big")


def best_of_curve(mse: Tensor, ks: list[int]) -> dict[int, float]:
    """Mean per-row mse of the best of the first k candidates, for each k: `mse` is [n, N], candidate 0 first."""
    return {k: float(mse[:, :k].min(1).values.mean()) for k in ks if 1 <= k <= mse.shape[1]}


def paired_bootstrap(
    a: Tensor, b: Tensor, groups: list, rawvar: float, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """fve_nrm(a) - fve_nrm(b) for per-row mse `a` and `b` of the same rows, with a 95% percentile interval from
    resampling whole groups (documents): rows of one document are not independent."""
    diff = (b.double() - a.double()) / rawvar  # each row's fve gain of a over b
    keys = list(dict.fromkeys(groups))
    index = {k: i for i, k in enumerate(keys)}
    g = torch.tensor([index[x] for x in groups])
    sums = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, g, diff)
    counts = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, g, torch.ones_like(diff))
    draw = torch.randint(len(keys), (n_boot, len(keys)), generator=torch.Generator().manual_seed(seed))
    boot = sums[draw].sum(1) / counts[draw].sum(1)
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(diff.mean()), lo, hi
