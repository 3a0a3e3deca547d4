"""The decode path behind one small interface, so a faster engine (static-cache CPU decode, vLLM with prompt
embeddings on GPU) can serve AV rollouts without the NLA code knowing. Greedy output must match the plain path."""

from __future__ import annotations

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
        self, model, embeds: torch.Tensor, mask: torch.Tensor, cfg: SamplingConfig, eos_ids: list[int], pad_id: int
    ) -> torch.Tensor:
        """New token ids [B, T] (right-padded with `pad_id`) continuing the given prompt embeddings."""


def hf_generate(
    model, embeds: torch.Tensor, mask: torch.Tensor, cfg: SamplingConfig, eos_ids: list[int], pad_id: int
) -> torch.Tensor:
    """Plain Hugging Face `generate` from `inputs_embeds` with a KV cache: the reference path."""
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
