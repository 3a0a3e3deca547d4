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


# ---- log-probs through the LM head, a chunk of rows at a time -----------------------------------------------------
class _HeadLogprobs(torch.autograd.Function):
    """log p(target) = logit[target] - logsumexp(logits), with logits = hidden @ weight.T made `chunk` rows at a time
    in reused buffers and never kept: backward recomputes each chunk's logits (one more head matmul) instead of
    saving an [N, V] tensor. On a 2-core CPU the plain path's fresh [N, V] tensors (the float copy, the logsumexp's
    temporaries, the gather's zero-filled gradient) cost more than the matmul itself."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, chunk: int, with_entropy: bool):
        n, vocab = hidden.shape[0], weight.shape[0]
        logp, lse, entropy = (hidden.new_zeros(n, dtype=torch.float32) for _ in range(3))
        raw, work = _head_buffers(hidden, min(chunk, n), vocab)
        exps_buf = hidden.new_empty(min(chunk, n), vocab, dtype=torch.float32)
        for i in range(0, n, chunk):
            h = hidden[i : i + chunk]
            m = h.shape[0]
            logits = _chunk_logits(h, weight, raw[:m], work[:m])
            top = logits.amax(-1, keepdim=True)
            exps = torch.sub(logits, top, out=exps_buf[:m]).exp_()
            total = exps.sum(-1)
            lse[i : i + m] = top[:, 0] + total.log()
            logp[i : i + m] = logits.gather(-1, target[i : i + m, None])[:, 0] - lse[i : i + m]
            if with_entropy:  # H = lse - sum(p * logit), p = exps / total
                entropy[i : i + m] = lse[i : i + m] - torch.bmm(exps[:, None], logits[:, :, None])[:, 0, 0] / total
        ctx.save_for_backward(hidden, weight, target, lse)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp: Tensor, _grad_entropy: Tensor):
        hidden, weight, target, lse = ctx.saved_tensors
        with torch.autocast(hidden.device.type, enabled=False):  # the buffers' dtypes are set here, not by autocast
            return _HeadLogprobs._backward(ctx, hidden, weight, target, lse, grad_logp)

    @staticmethod
    def _backward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, lse: Tensor, grad_logp: Tensor):
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        raw, work = _head_buffers(hidden, min(ctx.chunk, hidden.shape[0]), weight.shape[0])
        for i in range(0, hidden.shape[0], ctx.chunk):
            h, g = hidden[i : i + ctx.chunk], grad_logp[i : i + ctx.chunk, None].float()
            m = h.shape[0]
            # d logp / d logits = onehot(target) - softmax
            grad = _chunk_logits(h, weight, raw[:m], work[:m]).sub_(lse[i : i + m, None]).exp_().mul_(-g)
            grad.scatter_add_(-1, target[i : i + m, None], g)
            grad = grad if grad.dtype == weight.dtype else raw[:m].copy_(grad)
            if grad_hidden is not None:
                torch.mm(grad, weight, out=grad_hidden[i : i + m])
            if grad_weight is not None:
                grad_weight += (grad.T @ h).float()
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def _head_buffers(hidden: Tensor, rows: int, vocab: int) -> tuple[Tensor, Tensor]:
    """A [rows, V] buffer in the compute dtype (the matmul's output) and one in float32, reused by every chunk:
    fresh multi-megabyte tensors cost page faults on each chunk."""
    raw = hidden.new_empty(rows, vocab)
    return raw, raw if raw.dtype == torch.float32 else hidden.new_empty(rows, vocab, dtype=torch.float32)


def _chunk_logits(h: Tensor, weight: Tensor, raw: Tensor, work: Tensor) -> Tensor:
    """One chunk's logits in float32, written into the buffers (`work`, or `raw` when that is float32)."""
    torch.mm(h, weight.T, out=raw)
    return raw if raw is work else work.copy_(raw)


def head_logprobs(
    hidden: Tensor, weight: Tensor, target: Tensor, *, with_entropy: bool = False, chunk_elements: int = 1 << 23
) -> tuple[Tensor, Tensor]:
    """(log p(target), entropy) per row of `hidden` [N, d] under a bias-free LM head `weight` [V, d], in float32;
    the entropy is a statistic without gradient (zeros unless `with_entropy`). Chunks hold about `chunk_elements`
    logits. `hidden` and `weight` compute in their own dtype (cast them first for bf16)."""
    chunk = max(1, chunk_elements // weight.shape[0])
    with torch.autocast(hidden.device.type, enabled=False):  # the buffers' dtypes are set here, not by autocast
        return _HeadLogprobs.apply(hidden, weight, target, chunk, with_entropy)
