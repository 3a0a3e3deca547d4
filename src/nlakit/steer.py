"""Causal use of reconstructions: write a vector into the target's residual stream at layer K and see what changes.

Two uses, one mechanism (`ResidualPatch`):
- round-trip patching: replace h at a position by AR(AV(h)) and compare the next-token distribution (eval);
- text-edit steering (the paper's rule): h <- h + alpha * |h| * delta / |delta| with delta = AR(edited) - AR(original),
  added at a position before the target continues (eval, web, CLI). alpha is a fraction of the activation's own
  norm, so one alpha means the same push at every layer and token.

The AR predicts a direction; its raw norm is not trained (the loss compares normalised vectors), so a reconstruction
patched in for h is rescaled to h's norm (`match_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from nlakit.batch import right_pad
from nlakit.errors import NlakitError
from nlakit.models import decoder_layers

if TYPE_CHECKING:
    from nlakit.nla import NLA


@dataclass
class Edit:
    """Change row `row` of the batch at token `position`: `replace` sets the residual there, `add` adds to it."""

    row: int
    position: int
    vector: torch.Tensor
    mode: str = "replace"


class ResidualPatch:
    """A forward hook on block K that applies `edits` to its output on the first forward only (the prompt pass).

    During cached generation the later calls see one new token at a time; the edit already lives in the KV cache,
    so the hook leaves them alone."""

    def __init__(self, model, layer: int, edits: list[Edit]):
        for e in edits:
            if e.mode not in ("replace", "add"):
                raise NlakitError(f"edit mode must be 'replace' or 'add', not {e.mode!r}")
        self.edits, self._used = edits, False
        self._handle = decoder_layers(model)[layer].register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if self._used or not self.edits:
            return None
        self._used = True
        if hidden.shape[1] <= max(e.position for e in self.edits):
            raise NlakitError(f"edit position {max(e.position for e in self.edits)} is past the input's end")
        hidden = hidden.clone()
        for e in self.edits:
            v = e.vector.to(hidden.device, hidden.dtype)
            if e.mode == "replace":
                hidden[e.row, e.position] = v
            else:
                hidden[e.row, e.position] += v
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def __enter__(self) -> ResidualPatch:
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def steering_vector(h: torch.Tensor, original: torch.Tensor, edited: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * |h| * delta / |delta| with delta = edited - original (raw AR outputs); rows broadcast. An edit that
    reconstructs to the same vector (no edit at all) gives no push."""
    delta = edited.float() - original.float()
    norm = delta.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, alpha * h.float().norm(dim=-1, keepdim=True) * delta / norm.clamp_min(1e-30), 0.0)


def match_norm(vectors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Rescale each row of `vectors` to the L2 norm of the matching row of `like`."""
    v, ref = vectors.float(), like.float()
    return v * (ref.norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True).clamp_min(1e-30))


@torch.no_grad()
def next_token_logprobs(
    model, ids: list[int], positions: list[int], layer: int, vectors=None, mode="replace", read: list[int] | None = None
):
    """Log-probs of the next token [n, V]: row i writes `vectors[i]` at layer `layer`, position `positions[i]` (no
    edit when `vectors` is None) and reads the prediction after position `read[i]` (default: `positions[i]`; a later
    read shows an edit's effect downstream, e.g. a rhyme planned at a line break).

    Rows are right-padded copies of the text, so one batched forward serves all positions."""
    if not positions:
        return torch.empty(0, 0)
    read = positions if read is None else read
    n = len(positions)
    dev = next(model.parameters()).device
    input_ids, mask = (t.to(dev) for t in right_pad([ids[: p + 1] for p in read], 0))
    edits = [] if vectors is None else [Edit(i, p, vectors[i], mode) for i, p in enumerate(positions)]
    with ResidualPatch(model, layer, edits):
        # the decoder stack, then the LM head only at the positions read ([n, V], not [n, T, V])
        hidden = getattr(model, model.base_model_prefix)(input_ids=input_ids, attention_mask=mask, use_cache=False)
    rows = torch.arange(n, device=dev)
    last = hidden.last_hidden_state[rows, torch.tensor(read, device=dev)]
    return torch.log_softmax(model.get_output_embeddings()(last).float(), -1).cpu()


@torch.no_grad()
def greedy_continuation(nla: NLA, ids: list[int], max_new_tokens: int, edits: list[Edit] | None = None) -> list[int]:
    """The target's greedy continuation of `ids` (new token ids only), with `edits` applied at layer K."""
    model, tok = nla.target_lm(), nla.target_tokenizer()
    inp = torch.tensor([ids], device=next(model.parameters()).device)
    with ResidualPatch(model, nla.layer, edits or []):
        gen = model.generate(
            input_ids=inp,
            attention_mask=torch.ones_like(inp),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    return gen[0, len(ids) :].tolist()


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probs (nats)."""
    return (logp.exp() * (logp - logq)).sum(-1)


@dataclass
class SteerResult:
    original: str  # the target's greedy continuation of the prompt, untouched
    steered: str  # the same with the steering vector added at `position`
    delta_norm: float
    position: int


@torch.no_grad()
def steer(
    nla: NLA,
    prompt: str,
    original: str,
    edited: str,
    *,
    position: int = -1,
    alpha: float = 1.0,
    max_new_tokens: int = 30,
) -> SteerResult:
    """Steer the target by an explanation edit: `steering_vector` (alpha * |h| * delta / |delta|, delta =
    AR(edited) - AR(original)) added at token `position` of `prompt` (negative counts from the end)."""
    if nla.ar is None:
        raise NlakitError("steering needs an AR; load one with ar=PATH")
    if not original.strip() or not edited.strip():
        raise NlakitError("both the original and the edited explanation must be non-empty")
    ids, acts = nla.activations(prompt)
    pos = position + len(ids) if position < 0 else position
    if not 0 <= pos < len(ids):
        raise NlakitError(f"position {position} is outside the prompt's {len(ids)} tokens")
    h = acts[pos : pos + 1]
    rec = nla.reconstruct([original, edited])
    delta = steering_vector(h, rec[:1], rec[1:], alpha)[0]
    tok = nla.target_tokenizer()
    outs = [
        tok.decode(greedy_continuation(nla, ids, max_new_tokens, edits), skip_special_tokens=True)
        for edits in ([], [Edit(0, pos, delta, "add")])
    ]
    return SteerResult(outs[0], outs[1], float(delta.norm()), pos)
