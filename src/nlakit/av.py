"""The activation verbaliser (AV): an LM that reads one vector injected at the marker of a fixed prompt and writes an
explanation inside <explanation> tags. One batched generation verbalises many vectors."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nlakit.batch import right_pad
from nlakit.config import SamplingConfig
from nlakit.errors import NlakitError
from nlakit.generation import (
    Generator,
    cache_kwarg,
    fast_generate,
    matmul_attention,
    output_cache,
    spread_cache,
    weights_in,
)
from nlakit.injection import check_tokens, check_vectors, find_marker, inject, marker_positions, render_av_prompt
from nlakit.io import umask_modes
from nlakit.maths import head_logprobs
from nlakit.meta import ModelMeta, read_model_meta, write_model_meta
from nlakit.models import decoder_stack, load_causal_lm, load_tokenizer, with_adapters

EXPLANATION_RE = re.compile(r"<explanation>(.*?)</explanation>", re.DOTALL)
INPUT_PROJ = "input_proj.safetensors"


def wrap_explanation(text: str) -> str:
    return "<explanation>\n" + text.strip() + "\n</explanation>"


def extract_explanation(raw: str) -> tuple[str, bool]:
    """The explanation inside the tags, and whether the tags were complete. Without a closing tag, the text after an
    opening tag (or all of it) is returned with `False`: RL treats that sample as failed."""
    m = EXPLANATION_RE.search(raw)
    if m:
        return m.group(1).strip(), True
    return raw.split("<explanation>", 1)[-1].strip(), False


TURN_CLOSE = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")


def stop_ids(model, tokenizer) -> list[int]:
    """Every token that ends the assistant turn: the tokenizer's EOS, the generation config's EOS ids (Gemma, Llama
    list several), and known chat turn-close tokens present in the vocabulary."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in TURN_CLOSE if t in vocab)
    return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id)


@dataclass
class Rollout:
    """Sampled explanations, packed as prompt + response (`ids`, `mask`, `labels` with -100 outside the response).
    `ok`: the sample closed its tags, stopped before the cap and is not empty; anything else is a failed sample."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    explanations: list[str]
    ok: torch.Tensor
    prompt_len: int

    @property
    def valid(self) -> torch.Tensor:
        """[B, T-P]: which positions after the prompt hold response tokens."""
        return self.labels[:, self.prompt_len :] != -100

    @property
    def lengths(self) -> torch.Tensor:
        """Response tokens per sample, the stop token included."""
        return self.valid.sum(1).cpu()


class AV:
    """An AV around a causal LM. `meta` is its model sidecar (role av): marker tokens, templates, injection scale."""

    def __init__(self, model, tokenizer, meta: ModelMeta, input_proj: torch.nn.Linear | None = None):
        if meta.injection_scale is None:
            raise NlakitError("the AV sidecar has no injection_scale; set extraction.injection_scale (a number)")
        if meta.tokens is None:
            raise NlakitError("the AV sidecar has no tokens section; it must record the marker and its neighbours")
        self.model, self.tok, self.meta, self.input_proj = model, tokenizer, meta, input_proj
        check_tokens(tokenizer, meta.tokens, meta.av_template)
        width = model.get_input_embeddings().weight.shape[1]
        expected = meta.d_model if input_proj is None else input_proj.in_features
        if (input_proj is None and width != meta.d_model) or (
            input_proj is not None and input_proj.out_features != width
        ):
            raise NlakitError(f"AV embeds d={width} but the sidecar says d_model={expected}; wrong base model?")
        self.prompt_ids = render_av_prompt(tokenizer, meta.av_template, meta.tokens.injection_char)
        self.eos_ids = stop_ids(model, tokenizer)
        self.generator: Generator = fast_generate
        self._head_is_plain: tuple[torch.nn.Module, bool] | None = None  # see _plain_head

    @classmethod
    def from_base(cls, base: str, meta: ModelMeta, *, device: str = "cpu", dtype="auto") -> AV:
        """A fresh AV on a base model for the activations `meta` describes (as `AR.from_base`); when the sidecar
        names no marker, one is found for the base's tokenizer and the templates."""
        tok = load_tokenizer(base)
        if meta.tokens is None:
            meta = replace(meta, tokens=find_marker(tok, meta.av_template, meta.ar_template))
        return cls(load_causal_lm(base, device=device, dtype=dtype), tok, meta)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # ---- building inputs -------------------------------------------------------------------------------------------
    def response_ids(self, explanation: str) -> list[int]:
        """Token ids of the assistant turn for `explanation`, closing tokens included (so the AV learns to stop)."""
        prompt_text = self.tok.decode(self.prompt_ids)
        content = self.meta.av_template.format(injection_char=self.meta.tokens.injection_char)
        msgs = [
            {"role": "user", "content": content},
            {"role": "assistant", "content": wrap_explanation(explanation)},
        ]
        full = self.tok.apply_chat_template(msgs, tokenize=False)
        if full.startswith(prompt_text):
            return self.tok.encode(full[len(prompt_text) :], add_special_tokens=False)
        return self.tok.encode(wrap_explanation(explanation), add_special_tokens=False) + self.eos_ids[:1]

    def embed(self, ids: torch.Tensor, mask: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Input embeddings with each row's marker replaced by its (projected) vector at `injection_scale`."""
        # The embedding layer's own forward applies any embed scale (Gemma's sqrt(d)), so rows match real tokens.
        embeds = self.model.get_input_embeddings()(ids)
        vectors = vectors.to(self.device, torch.float32)
        if self.input_proj is not None:
            vectors = self.input_proj(vectors)
        return inject(embeds, marker_positions(ids, mask, self.meta.tokens), vectors, self.meta.injection_scale)

    @torch.no_grad()
    def check_injection(self) -> None:
        """Preflight: two different vectors must change the next-token logits; identical outputs mean the vector is
        ignored (a failed injection otherwise shows up only as fluent, vector-independent text)."""
        vectors = torch.randn(2, self.meta.d_model, generator=torch.Generator().manual_seed(0))
        ids = torch.tensor([self.prompt_ids] * 2, device=self.device)
        mask = torch.ones_like(ids)
        logits = self.model(inputs_embeds=self.embed(ids, mask, vectors), attention_mask=mask).logits[:, -1].float()
        if torch.allclose(logits[0], logits[1], atol=1e-5):
            raise NlakitError(
                "injection failed: different vectors give identical AV outputs; check the marker, "
                "injection_scale and that inputs_embeds reach the model"
            )

    # ---- generation ------------------------------------------------------------------------------------------------
    def generate_ids(
        self, vectors: torch.Tensor, cfg: SamplingConfig, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """New token ids [B, T] for a batch of vectors; `dtype` decodes on a copy of the weights in that dtype (LoRA
        merged first, at the weights' own precision)."""
        vectors = check_vectors(torch.as_tensor(vectors, dtype=torch.float32), self.meta.d_model)
        n = vectors.shape[0]
        ids = torch.tensor([self.prompt_ids] * n, device=self.device)
        mask = torch.ones_like(ids)
        marker = self.prompt_ids.index(self.meta.tokens.injection_token_id)
        with weights_in(self.model, dtype):
            with torch.inference_mode():
                embeds = self.embed(ids, mask, vectors)
            return self.generator(
                self.model, embeds, mask, cfg, self.eos_ids, self.tok.pad_token_id, shared_prefix=marker
            )

    def verbalize(
        self,
        vectors,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        batch_size: int = 32,
        raw: bool = False,
    ) -> list[str]:
        """Explanations for a batch of raw activation vectors [n, d] (rescaled internally). `max_new_tokens` defaults
        to the cap the AV was trained under (`ModelMeta.max_new_tokens`)."""
        max_new_tokens = max_new_tokens or self.meta.max_new_tokens
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.ndim == 1:
            vectors = vectors[None]
        cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        out = []
        for b in range(0, vectors.shape[0], batch_size):
            new = self.generate_ids(vectors[b : b + batch_size], cfg)
            texts = self.tok.batch_decode(new, skip_special_tokens=True)
            out += texts if raw else [extract_explanation(t)[0] for t in texts]
        return out

    # ---- training --------------------------------------------------------------------------------------------------
    def batch(self, explanations: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded prompt+response ids, attention mask, and labels (-100 outside the response)."""
        return self._pack([self.response_ids(e) for e in explanations])

    def rollout_batch(self, generated: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The same layout for generated ids [B, T]: each response runs up to and including its first stop token."""
        responses = []
        for row in generated.tolist():
            ends = [i for i, t in enumerate(row) if t in self.eos_ids]
            # generators pad only after a stop token, so a row without one (truncated) is scored whole
            responses.append(row[: ends[0] + 1] if ends else row)
        return self._pack(responses)

    def rollout(self, vectors: torch.Tensor, cfg: SamplingConfig, dtype: torch.dtype | None = None) -> Rollout:
        """Sample one explanation per vector (decoded in `dtype`, see `generate_ids`) and pack it for scoring: the
        first phase of an RL step."""
        generated = self.generate_ids(vectors, cfg, dtype)
        texts = self.tok.batch_decode(generated, skip_special_tokens=True)
        ids, mask, labels = self.rollout_batch(generated)
        stopped = torch.tensor([any(t in self.eos_ids for t in row) for row in generated.tolist()])
        parsed = [extract_explanation(t) for t in texts]
        ok = torch.tensor([complete and bool(e) for e, complete in parsed]) & stopped
        return Rollout(ids, mask, labels, [e for e, _ in parsed], ok, len(self.prompt_ids))

    def _pack(self, responses: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.prompt_ids
        ids, mask = right_pad([p + r for r in responses], self.tok.pad_token_id)
        labels = torch.where(mask.bool(), ids, -100)
        labels[:, : len(p)] = -100  # the loss reads the response only
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def token_logprobs(
        self,
        vectors: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        with_entropy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each response token [B, T-P] (0 at padding), with the vector injected; optionally
        also the entropy of each next-token distribution.

        Every row starts with the same P-token prompt, so logits are computed only from position P-1 on: the LM head
        over the prompt (most of the sequence, and a 49k-wide softmax) would be wasted work. The prompt before the
        marker is the same in every row too: it runs once, as a batch of one whose keys and values every row reads
        (gradients flow back through them), which saves a third of an RL step's tokens. The rest of the prompt is
        the same in rows with the same vector (an RL group): it runs once per distinct vector. Only the response
        tokens' rows go through the head, a chunk at a time (`head_logprobs`), where the head is a plain matrix."""
        with matmul_attention(self.model):  # on CPU, its backward beats SDPA's flash kernel ~3x at these sizes
            return self._token_logprobs(vectors, ids, mask, labels, with_entropy)

    def _token_logprobs(self, vectors, ids, mask, labels, with_entropy):
        p, rows = len(self.prompt_ids), ids.shape[0]
        embeds = self.embed(ids, mask, vectors)
        chunked = self._plain_head()
        # the decoder stack alone where the head is a plain matmul (`head_logprobs` applies it), else the whole LM
        net = decoder_stack(_unwrapped(self.model)) if chunked else self.model
        head_kw = {} if chunked else {"logits_to_keep": 1}

        def out_at(out):  # what the head reads: hidden states (chunked) or logits
            return out.last_hidden_state if chunked else out.logits

        # the prompt in shared pieces: [0, marker) once, [marker, P) once per distinct vector; `first` is then the
        # output at P-1 (it predicts the first response token) for every row
        past, first = None, None
        marker = self.prompt_ids.index(self.meta.tokens.injection_token_id)
        if marker > 0 and rows > 1 and bool(mask[:, :p].all()):
            prefix = net(inputs_embeds=embeds[:1, :marker], use_cache=True, **head_kw)
            _, which = torch.unique(vectors, dim=0, return_inverse=True)
            distinct = int(which.max()) + 1
            past = spread_cache(output_cache(prefix), distinct)
            if past is not None and distinct < rows:
                dev = which.device
                rep = torch.full((distinct,), rows, device=dev).scatter_reduce(
                    0, which, torch.arange(rows, device=dev), "amin"
                )
                tail = net(
                    inputs_embeds=embeds[rep.to(ids.device), marker:p],
                    attention_mask=mask[:distinct, :p],
                    **{cache_kwarg(self.model): past, "use_cache": True},
                    **head_kw,
                )
                which = which.to(ids.device)
                past, first = spread_cache(output_cache(tail), which), out_at(tail)[which, -1:]
        start = p if first is not None else marker if past is not None else 0  # where the cached positions end
        kw = {cache_kwarg(self.model): past, "use_cache": True} if past is not None else {"use_cache": False}
        target = labels[:, p:]
        valid = target != -100
        keep = {} if chunked else {"logits_to_keep": ids.shape[1] - max(start, p - 1)}
        out = out_at(net(inputs_embeds=embeds[:, start:], attention_mask=mask, **kw, **keep))
        # the outputs at positions P-1 .. T-2, each predicting the next (response) token
        pred = out[:, :-1] if first is None else torch.cat([first, out[:, :-1]], 1)
        pred = pred[:, pred.shape[1] - target.shape[1] :]
        if chunked:
            hidden = pred[valid]
            weight = self.model.get_output_embeddings().weight
            dev = hidden.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
            lp, ent = head_logprobs(hidden.to(dtype), weight.to(dtype), target[valid], with_entropy=with_entropy)
            zeros = torch.zeros(valid.shape, device=lp.device)
            logp, entropy = zeros.masked_scatter(valid, lp), zeros.masked_scatter(valid, ent)
            return (logp, entropy) if with_entropy else logp
        logits = pred.float()
        # logit - logsumexp: no [B, T, vocab] log-softmax copy is kept for backward
        lse = torch.logsumexp(logits, -1)
        logp = (logits.gather(-1, target.clamp_min(0)[..., None])[..., 0] - lse) * valid
        if not with_entropy:
            return logp
        with torch.no_grad():  # a logged statistic, never part of the graph: H = lse - sum(p * logit), row by row
            lse = lse.detach()
            entropy = torch.stack([lse[i] - (torch.softmax(row, -1) * row).sum(-1) for i, row in enumerate(logits)])
        return logp, entropy * valid

    def _plain_head(self) -> bool:
        """Whether the LM's logits are its decoder stack's output times a bias-free head matrix (no softcapping, no
        logit scale), checked once on the prompt in eval mode: then log-probs go through `head_logprobs`, which
        makes the logits a chunk at a time. A head with adapters, a bias or a post-transform takes the plain path."""
        if self._head_is_plain is None or self._head_is_plain[0] is not self.model:
            head = self.model.get_output_embeddings()
            plain = type(head) is torch.nn.Linear and head.bias is None
            if plain:
                was_training = self.model.training
                self.model.eval()
                try:
                    with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                        ids = torch.tensor([self.prompt_ids], device=self.device)
                        logits = self.model(input_ids=ids).logits[0].float()
                        hidden = decoder_stack(_unwrapped(self.model))(input_ids=ids).last_hidden_state[0]
                        plain = torch.allclose(logits, (hidden @ head.weight.T).float(), rtol=1e-3, atol=1e-3)
                finally:
                    self.model.train(was_training)
            self._head_is_plain = (self.model, plain)  # per model: RL swaps in a plain reference for its KL pass
        return self._head_is_plain[1]

    def sft_loss(self, vectors: torch.Tensor, explanations: list[str]) -> torch.Tensor:
        """Response-token NLL, averaged per sample then over samples (the reference's SFT loss)."""
        ids, mask, labels = self.batch(explanations)
        logp = self.token_logprobs(vectors, ids, mask, labels)
        n_tok = (labels[:, len(self.prompt_ids) :] != -100).sum(1).clamp_min(1)
        return (-(logp.sum(1) / n_tok)).mean()

    # ---- persistence -----------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with umask_modes(path):
            self.model.save_pretrained(path)
            if self.input_proj is not None:
                save_file({k: v.contiguous() for k, v in self.input_proj.state_dict().items()}, path / INPUT_PROJ)
        self.tok.save_pretrained(path)
        write_model_meta(path, self.meta)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype | None = "auto",
        trainable: bool = False,
        base: str | Path | None = None,
        injection_scale: float | None = None,
        device_map: str | dict | None = None,
    ) -> AV:
        """Load an AV folder: LoRA adapters over the sidecar's base, or full weights (ours or the reference's).

        `base` replaces the sidecar's base model (a Hub id in released sidecars) with a local folder;
        `injection_scale` overrides the sidecar's (the AV learned one scale: only for sidecars that lack it or are
        wrong); `device_map` places a big model across devices through accelerate."""
        path = Path(path)
        if not path.is_dir():
            raise NlakitError(f"no AV folder at {path}")
        meta = read_model_meta(path)
        if meta.role != "av":
            raise NlakitError(f"{path} holds an {meta.role.upper()} checkpoint, not an AV")
        if injection_scale is not None:
            meta.injection_scale = float(injection_scale)
        base = str(base) if base else meta.base_checkpoint
        tok = (
            load_tokenizer(path, padding_side="right")
            if (path / "tokenizer_config.json").is_file()
            else load_tokenizer(base)
        )
        if (path / "adapter_config.json").is_file():
            model = with_adapters(
                load_causal_lm(base, device=device, dtype=dtype, device_map=device_map), path, trainable
            )
        else:
            model = load_causal_lm(path, device=device, dtype=dtype, device_map=device_map)
        proj = None
        if (path / INPUT_PROJ).is_file():
            state = load_file(path / INPUT_PROJ)
            w = state["weight"]
            proj = torch.nn.Linear(w.shape[1], w.shape[0], bias="bias" in state).to(device)
            proj.load_state_dict(state)
        model.train(trainable)
        av = cls(model, tok, meta, proj)
        av.check_injection()
        return av


def _unwrapped(model):
    """The transformers model under a PEFT wrapper (its adapters stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def default_injection_scale(mean_norm: float) -> float:
    """A round number a bit above the mean activation norm (the reference's rule for choosing injection_scale)."""
    if mean_norm <= 0:
        raise NlakitError("mean activation norm must be positive to choose an injection scale")
    target = mean_norm * 1.1
    step = 10 ** max(0, len(str(int(target))) - 2)
    return float(-(-target // step) * step)
