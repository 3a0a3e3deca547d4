"""The decode path behind one small interface, so a faster engine (vLLM with prompt embeddings on a GPU machine)
can serve AV rollouts without the NLA code knowing. Greedy output must match the plain path token for token.

Two implementations:
- `hf_generate`: Hugging Face `generate` from `inputs_embeds` with a KV cache (the reference path);
- `fast_generate` (default): every AV prompt is the same tokens up to the marker, so that shared prefix is prefilled
  once at batch 1 and its KV cache repeated across the batch; then a lean decode loop (last-position logits only,
  no logits-processor stack, early stop when every row has finished).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class SamplingConfig:
    max_new_tokens: int = 150
    min_new_tokens: int = 0  # benchmarks force equal lengths; EOS before this is suppressed
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


class Generator(Protocol):
    def __call__(
        self,
        model,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        cfg: SamplingConfig,
        eos_ids: list[int],
        pad_id: int,
        shared_prefix: int = 0,
    ) -> torch.Tensor:
        """New token ids [B, T] (right-padded with `pad_id`) continuing the given prompt embeddings. The first
        `shared_prefix` prompt positions are identical in every row (an engine may compute them once)."""


def hf_generate(
    model,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    cfg: SamplingConfig,
    eos_ids: list[int],
    pad_id: int,
    shared_prefix: int = 0,
) -> torch.Tensor:
    """Plain Hugging Face `generate` from `inputs_embeds` with a KV cache: the reference path."""
    del shared_prefix  # computed per row here
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    sample = cfg.temperature > 0
    kwargs = {"do_sample": sample}
    if sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    with torch.inference_mode():
        out = model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
            **kwargs,
        )
    return out


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy at temperature 0; otherwise temperature + nucleus (top-p) sampling."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keep the smallest set whose mass reaches top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def cache_kwarg(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.x); use whichever this version's forward takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def fast_generate(
    model,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    cfg: SamplingConfig,
    eos_ids: list[int],
    pad_id: int,
    shared_prefix: int = 0,
) -> torch.Tensor:
    batch = embeds.shape[0]
    generator = torch.Generator(device=embeds.device).manual_seed(cfg.seed) if cfg.seed is not None else None
    eos = torch.tensor(eos_ids, device=embeds.device)
    if not bool(mask.all()):
        shared_prefix = 0  # padded rows differ in layout; no sharing
    kw = cache_kwarg(model)
    with torch.inference_mode():
        past = None
        if shared_prefix > 0 and batch > 1:
            past = model(inputs_embeds=embeds[:1, :shared_prefix], use_cache=True, logits_to_keep=1).past_key_values
            past.batch_repeat_interleave(batch)
        else:
            shared_prefix = 0
        out = model(
            inputs_embeds=embeds[:, shared_prefix:], attention_mask=mask, use_cache=True, logits_to_keep=1, **{kw: past}
        )
        past, attn = out.past_key_values, mask
        finished = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
        tokens = []
        for step in range(cfg.max_new_tokens):
            logits = out.logits[:, -1].float()
            if step < cfg.min_new_tokens:
                logits[:, eos] = float("-inf")
            nxt = sample_next(logits, cfg, generator)
            nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
            tokens.append(nxt)
            finished |= torch.isin(nxt, eos)
            if bool(finished.all()):
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=attn, use_cache=True, **{kw: past})
    return torch.stack(tokens, dim=1) if tokens else torch.empty(batch, 0, dtype=torch.long)
