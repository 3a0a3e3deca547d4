"""The decode path behind one small interface, so a faster engine (vLLM with prompt embeddings on a GPU machine)
can serve AV rollouts without the NLA code knowing. Greedy output must match the plain path token for token.

Two implementations:
- `hf_generate`: Hugging Face `generate` from `inputs_embeds` with a KV cache (the reference path);
- `fast_generate` (default): every AV prompt is the same tokens up to the marker, so that shared prefix is prefilled
  once at batch 1 and written once into a KV cache preallocated for the whole generation (a decode step appends in
  place); then a lean decode loop (last-position logits only, no logits-processor stack; a row leaves the batch when
  it finishes, where the cache can drop rows, so later steps cost only the rows still writing) with single-token
  attention done as two small matmuls per layer, LoRA adapters merged and bf16 weights prepacked for oneDNN for the
  duration, and inverse-CDF sampling.
  Each row's sampling draws do not depend on which rows are still there; its tokens stay the same as far as the
  matmul kernels give the same result for a smaller batch (fp32 on CPU here; bf16 or a GPU may differ in the last
  bits, so a near-tie can go the other way).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from typing import Protocol

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicIndexedLayer, DynamicLayer, DynamicSlidingWindowLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from nlakit.config import SamplingConfig


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


def sample_next(
    logits: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy at temperature 0; otherwise temperature + nucleus (top-p) sampling, drawn by inverting the CDF with one
    uniform per row (`torch.multinomial` draws one exponential per vocabulary entry: a quarter of a decode step on
    CPU). The cumulative sum accumulates in float64 on CPU, so each token keeps its probability to ~1e-7. `uniform`
    ([B, 1] in [0, 1)) gives the draws instead of `generator`."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    weights = ((logits - logits.amax(-1, keepdim=True)) / cfg.temperature).exp_()  # unnormalised probabilities
    order = None
    if cfg.top_p < 1.0:
        weights, order = weights.sort(dim=-1, descending=True)
    cdf = weights.cumsum(-1)
    mass = cdf[:, -1:]
    if order is not None:  # keep the smallest set whose mass reaches top_p
        kept = ((cdf - weights) <= cfg.top_p * mass).sum(-1, keepdim=True)
        mass = cdf.gather(-1, kept - 1)
    if uniform is None:
        uniform = torch.rand(mass.shape, generator=generator, device=mass.device, dtype=mass.dtype)
    u = uniform.to(mass.dtype) * mass
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(cdf.shape[-1] - 1)
    return (idx if order is None else order.gather(-1, idx))[:, 0]


def output_cache(out):
    """A model output's KV cache: `cache` since transformers 5 renamed it (reading `past_key_values` logs a notice)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def cache_kwarg(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.x); use whichever this version's forward takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


# ---- attention as two matmuls where that beats SDPA on CPU ----------------------------------------------------------
MATMUL_ATTENTION = "nlakit_matmul"
MATMUL_SCORES_LIMIT = 1 << 24  # score elements per layer (64 MB in fp32) above which SDPA's memory saving wins


def matmul_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA, except where two matmuls are faster: a single query token (decoding: PyTorch's CPU flash kernel takes
    ~10 ms per layer for that shape in bf16, the matmuls ~0.5 ms), and passes that backpropagate on CPU (its flash
    backward takes ~40 ms per layer of an RL AV update, the matmuls' ~14 ms), while the scores stay small. The query
    heads of each KV group attend as one [G*Q, T] matmul (no repeated keys). Queries, keys, scores and softmax are
    float32, autocast or not (SDPA under CPU autocast reads bf16 queries and keys); only the probabilities are rounded
    to the value dtype for the value matmul. Masked scores get the dtype's minimum, as eager attention's, so a fully
    masked row stays finite under a boolean or implied mask."""
    b, h, q_len, d = query.shape
    t = key.shape[2]
    training = query.device.type == "cpu" and torch.is_grad_enabled() and b * h * q_len * t <= MATMUL_SCORES_LIMIT
    unsupported = any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "position_bias"))
    # without a mask, transformers means causal aligned to the first key (SDPA crops the keys): only q == t is plain
    implicit = attention_mask is None and q_len > 1 and q_len != t
    if (q_len != 1 and not training) or dropout or unsupported or implicit:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    groups = key.shape[1]
    no_autocast = (
        torch.autocast(query.device.type, enabled=False)
        if torch.amp.is_autocast_available(query.device.type)
        else nullcontext()
    )
    with no_autocast:  # CPU autocast would round the scores to bf16
        q = query.reshape(b, groups, h // groups * q_len, d).float()
        scores = torch.matmul(q, key.float().transpose(-1, -2)) * (d**-0.5 if scaling is None else scaling)
        scores = scores.view(b, groups, h // groups, q_len, t)
        hidden = None
        if attention_mask is not None:  # [B, 1, Q, T]: broadcasts over the KV groups and their heads
            mask = attention_mask[:, :, None]
            if mask.dtype == torch.bool:
                hidden = ~mask
            else:
                scores = scores + mask
        elif q_len > 1 and _causal(module, kwargs.get("is_causal")):
            hidden = torch.ones(q_len, t, dtype=torch.bool, device=scores.device).triu_(1)
        if hidden is not None:
            scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1).to(value.dtype).view(b, groups, h // groups * q_len, t)
        out = torch.matmul(probs, value).view(b, h, q_len, value.shape[-1])
    return out.transpose(1, 2).contiguous(), None


def _causal(module, is_causal: bool | None) -> bool:
    """SDPA's rule: the call's `is_causal` where given, else the module's (decoder attention is causal)."""
    return getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)


AttentionInterface.register(MATMUL_ATTENTION, matmul_attention_forward)
AttentionMaskInterface.register(MATMUL_ATTENTION, sdpa_mask)  # the same masks SDPA gets


@contextmanager
def matmul_attention(model):
    """Switch a model on SDPA to `matmul_attention_forward` for the duration (decoding, and CPU training passes)."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    config._attn_implementation = MATMUL_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


# ---- LoRA merged for decoding ----------------------------------------------------------------------------------------
@contextmanager
def merged_lora(model):
    """PEFT adapters merged into the base weights for the duration, so each linear is one matmul instead of three.
    The sums are new tensors; the originals are put back afterwards, bit for bit (an unmerge alone leaves rounding in
    the base weights, which would build up over RL steps and break exact resume). Plain LoRA layers are summed here
    with one delta each (PEFT's safe merge, its finiteness checks and its unmerge cost about 1 s per RL step);
    other adapter kinds (DoRA) go through PEFT's own merge."""
    if not hasattr(model, "merge_adapter"):
        yield
        return
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.merged and not m.disable_adapters]
    if not layers:
        yield
        return
    plain = all(
        type(m) is LoraLinear and not any(m.use_dora.values()) and not any(getattr(m, "lora_bias", {}).values())
        for m in layers
    )
    saved = [(p, p.data) for m in layers for p in m.get_base_layer().parameters(recurse=False)]
    try:
        with torch.no_grad():
            if plain:
                for m in layers:
                    active = [a for a in m.active_adapters if a in m.lora_A]
                    weight = m.get_base_layer().weight
                    for a in active:  # adapters may be fp32 over bf16 weights: the sum keeps the weight's dtype
                        weight.data = weight.data + m.get_delta_weight(a).to(weight.dtype)
                    m.merged_adapters = active  # the layer's forward now skips its adapters
            else:
                model.merge_adapter(safe_merge=True)
        yield
    finally:
        with torch.no_grad():
            if plain:
                for m in layers:
                    m.merged_adapters = []
            else:
                model.unmerge_adapter()
            for p, data in saved:
                p.data = data


@contextmanager
def weights_in(model, dtype: torch.dtype | None):
    """The model's floating-point parameters cast to `dtype` for the duration, LoRA merged first at the weights' own
    precision, the originals put back untouched afterwards: fp32 training weights decode on a bf16 copy where bf16
    GEMMs are faster (AVX-512 bf16 CPUs, GPUs). Buffers keep their dtype (rotary frequencies lose positions in bf16);
    `None` changes nothing."""
    if dtype is None:
        yield
        return
    with merged_lora(model):
        saved = [(p, p.data) for p in model.parameters() if p.is_floating_point() and p.dtype != dtype]
        with torch.no_grad():
            for p, data in saved:
                p.data = data.to(dtype)
        try:
            yield
        finally:
            for p, data in saved:
                p.data = data


# ---- linears on prepacked weights for decoding -----------------------------------------------------------------------
def _packs_linears() -> bool:
    """oneDNN's linear ops exist and this CPU runs their bf16 path (AVX-512 BW/VL/DQ or newer; packing raises
    elsewhere, where the plain bf16 linear is the one to use)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_is_mkldnn_bf16_supported")
        and bool(ops._is_mkldnn_bf16_supported())
    )


@contextmanager
def packed_linears(model, rows: int):
    """For the duration, each bf16 `nn.Linear` on CPU computes on its weight prepacked by oneDNN (the blocked layout
    its GEMM reads), packed at its first call for batches of about `rows` rows. Decoding multiplies a few rows by
    each weight: there PyTorch's bf16 linear re-lays the weight out on every call, which costs a quarter of a decode
    step (measured: RL rollouts 1.3x faster with the same tokens). The modules' own forwards are put back afterwards.
    The plain forward runs where oneDNN lacks the ops or this CPU its bf16 path (no AVX-512), under autocast, and
    for a call whose weight, bias or input needs a gradient."""
    # plain CPU bf16 linears only: subclasses (quantised, adapter layers), weights elsewhere (a device_map) and
    # modules whose forward is already replaced (accelerate's hooks, an enclosing packing) keep their forward
    linears = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and m.weight.dtype == torch.bfloat16
        and m.weight.device.type == "cpu"
        and "forward" not in vars(m)
    ]
    if not linears or torch.is_autocast_enabled("cpu") or not _packs_linears():
        yield
        return
    for m in linears:
        m.forward = _packed_forward(m, rows)
    try:
        yield
    finally:
        for m in linears:
            del m.forward  # the class's forward again


def _packed_forward(module: torch.nn.Linear, rows: int):
    plain = type(module).forward.__get__(module)
    packed = None

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal packed
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
            return plain(x)
        if packed is None:  # packed from the weight as it is now: the context ends before weights change
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), rows)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, module.bias, "none", [], "")

    return forward


# ---- a KV cache sized for the whole generation -----------------------------------------------------------------------
class _PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers sized for the whole generation: appending a token
    writes one slot instead of concatenating (copying) the whole cache, per layer and step."""

    def __init__(self, layer: DynamicLayer, batch: int, capacity: int):
        super().__init__()
        k, v = layer.keys, layer.values
        self.device, self.is_initialized = k.device, True
        self._k = k.new_empty(batch, k.shape[1], capacity, k.shape[3])
        self._v = v.new_empty(batch, v.shape[1], capacity, v.shape[3])
        n = k.shape[2]
        self._k[:, :, :n], self._v[:, :, :n] = k, v  # a batch-1 prefix broadcasts over the batch
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    def update(self, key_states, value_states, *args, **kwargs):
        n, m = self.keys.shape[2], key_states.shape[2]
        if n + m > self._k.shape[2]:
            raise RuntimeError(f"KV cache preallocated for {self._k.shape[2]} positions, asked for {n + m}")
        self._k[:, :, n : n + m], self._v[:, :, n : n + m] = key_states, value_states
        self.keys, self.values = self._k[:, :, : n + m], self._v[:, :, : n + m]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows `indices`, in new buffers of the same capacity; only the filled positions are copied."""
        n = self.keys.shape[2]
        self._k = self._k.new_empty(len(indices), *self._k.shape[1:])
        self._v = self._v.new_empty(len(indices), *self._v.shape[1:])
        self._k[:, :, :n], self._v[:, :, :n] = self.keys[indices], self.values[indices]
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]


# cache layers that drop batch rows completely (keys, values and any per-row state); linear-attention and
# convolution states (Qwen3-Next, LFM2) are not cut by the `DynamicLayer` method they inherit, so they keep every row
_ROW_DROPPING_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer, DynamicIndexedLayer, _PreallocatedLayer)


def can_drop_rows(cache) -> bool:
    return all(type(layer) in _ROW_DROPPING_LAYERS for layer in cache.layers)


def preallocate(cache, batch: int, capacity: int):
    """Move a filled cache's plain layers into `_PreallocatedLayer`s of `batch` rows and `capacity` positions. Other
    layer kinds (Gemma-3's sliding windows) keep their own update logic, but their batch-1 shared prefix is repeated
    over the batch here too: their `update` concatenates along positions and needs every row present."""
    layers = []
    for layer in cache.layers:
        if type(layer) is DynamicLayer and layer.is_initialized:
            layer = _PreallocatedLayer(layer, batch, capacity)
        elif getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.shape[0] != batch:
            if layer.keys.shape[0] != 1:
                raise RuntimeError(f"cannot spread a cache of {layer.keys.shape[0]} rows over a batch of {batch}")
            layer.keys = layer.keys.expand(batch, *layer.keys.shape[1:]).contiguous()
            layer.values = layer.values.expand(batch, *layer.values.shape[1:]).contiguous()
        layers.append(layer)
    cache.layers = layers
    return cache


def spread_cache(cache, rows: int | torch.Tensor):
    """A prefix's cache for a larger batch to read: `rows` is that batch's size (a batch-1 cache, each layer's keys
    and values expanded: views, no copy) or the cache row each new row reads (a gather). A forward appends the rows'
    own positions by concatenation, which also carries gradients back to the prefix. None where a layer keeps other
    per-row state (linear attention, convolutions): run the prefix in every row there."""
    if not all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers):
        return None
    for layer in cache.layers:
        if isinstance(rows, int):
            layer.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
            layer.values = layer.values.expand(rows, *layer.values.shape[1:])
        else:
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    return cache


def fast_generate(
    model,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    cfg: SamplingConfig,
    eos_ids: list[int],
    pad_id: int,
    shared_prefix: int = 0,
) -> torch.Tensor:
    batch, prompt = embeds.shape[:2]
    generator = torch.Generator(device=embeds.device).manual_seed(cfg.seed) if cfg.seed is not None else None
    eos = torch.tensor(eos_ids, device=embeds.device)
    padded = not bool(mask.all())
    if padded or batch == 1:
        shared_prefix = 0  # padded rows differ in layout; no sharing
    capacity = prompt + cfg.max_new_tokens
    kw = cache_kwarg(model)
    tokens = torch.full((batch, cfg.max_new_tokens), pad_id, dtype=torch.long, device=embeds.device)
    rows = torch.arange(batch, device=embeds.device)  # the original index of each row still in the batch
    steps = 0
    with merged_lora(model), packed_linears(model, batch), matmul_attention(model), torch.inference_mode():
        past = None
        if shared_prefix > 0:
            out = model(inputs_embeds=embeds[:1, :shared_prefix], use_cache=True, logits_to_keep=1)
            past = preallocate(output_cache(out), batch, capacity)
        out = model(
            inputs_embeds=embeds[:, shared_prefix:], attention_mask=mask, use_cache=True, logits_to_keep=1, **{kw: past}
        )
        past = output_cache(out) if past is not None else preallocate(output_cache(out), batch, capacity)
        droppable = can_drop_rows(past)
        # without padding every position is visible, and the model builds no mask for a single query
        attn = mask if padded else None
        finished = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
        for step in range(cfg.max_new_tokens):
            logits = out.logits[:, -1].float()
            if step < cfg.min_new_tokens:
                logits[:, eos] = float("-inf")
            uniform = None
            if cfg.temperature > 0:  # one draw per original row and step, so dropping rows leaves the others' draws
                uniform = torch.rand((batch, 1), generator=generator, device=logits.device)[rows]
            nxt = sample_next(logits, cfg, generator, uniform)
            nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
            tokens[rows, step] = nxt
            steps = step + 1
            finished |= torch.isin(nxt, eos)
            if bool(finished.all()) or step == cfg.max_new_tokens - 1:
                break
            if droppable and bool(finished.any()):  # a decode step costs in proportion to the rows it carries
                keep = (~finished).nonzero()[:, 0]
                rows, nxt, finished = rows[keep], nxt[keep], finished[keep]
                past.batch_select_indices(keep)
                if padded:
                    attn = attn[keep]
            if padded:
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=attn, use_cache=True, **{kw: past})
    return tokens[:, :steps]
