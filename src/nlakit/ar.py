"""The activation reconstructor (AR): the AR base truncated to blocks 0..K (the layers after K are never read), its
final norm replaced by Identity, and `value_head = Linear(d_ar, d_target, bias=False)` initialised to the identity.
It reads an explanation in the sidecar's template and predicts the vector at the last real token."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nlakit.errors import NlakitError
from nlakit.generation import matmul_attention
from nlakit.io import umask_modes
from nlakit.maths import mse_nrm
from nlakit.meta import ModelMeta, read_model_meta, write_model_meta
from nlakit.models import (
    final_norm_to_identity,
    load_backbone,
    load_config,
    load_tokenizer,
    model_device,
    with_adapters,
)

VALUE_HEAD = "value_head.safetensors"
QUOTE_MARKS = '"\u201c\u201d'


def _quote_marks(line: str) -> list[int]:
    return [i for i, c in enumerate(line) if c in QUOTE_MARKS]


def _first_quote_length(marks: list[int], line: str) -> int:
    """Length of a line's first quoted segment (to the line's end if unclosed); -1 without a quote mark. The first
    segment, not all quoted text: the final-token line quotes one word, then several next-token guesses."""
    if not marks:
        return -1
    return (marks[1] if len(marks) > 1 else len(line)) - marks[0]


def quoted_span(explanation: str) -> str:
    """What a `{quote}` AR template repeats: the explanation's main quote. That is the line whose first quoted
    segment is the longest (the quoted clause, not the final token's one-word quotes), from its first mark to its
    last (a quoted clause may hold marks itself; an unclosed quote runs to the line's end). Chosen by length, not
    position, so reordering the explanation's paragraphs does not change what the AR re-reads. One leading space,
    so its first word tokenises as it does mid-text; '' if none."""
    lines = [(line, _quote_marks(line)) for line in explanation.splitlines()] or [("", [])]
    line, marks = max(lines, key=lambda lm: _first_quote_length(lm[1], lm[0]))  # ties: the first such line
    if not marks:
        return ""
    a, b = marks[0], marks[-1]
    span = (line[a + 1 : b] if b > a else line[a + 1 :]).strip()
    return " " + span if span else ""


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token; correct for right *and* left padding (reference pitfall 9)."""
    return (mask * torch.arange(1, mask.shape[1] + 1, device=mask.device)).argmax(dim=1)


class AR(torch.nn.Module):
    def __init__(self, backbone, tokenizer, meta: ModelMeta, value_head: torch.nn.Linear):
        super().__init__()
        self.backbone, self.tok, self.meta, self.value_head = backbone, tokenizer, meta, value_head
        self.tok.padding_side = "right"
        n_layers = backbone.config.num_hidden_layers
        if n_layers != meta.extraction_layer_index + 1:
            raise NlakitError(
                f"AR backbone has {n_layers} blocks but the sidecar's layer K={meta.extraction_layer_index} "
                f"needs K+1={meta.extraction_layer_index + 1}"
            )
        if value_head.out_features != meta.d_model:
            raise NlakitError(
                f"value head outputs d={value_head.out_features} but the sidecar says d_model={meta.d_model}"
            )

    @classmethod
    def from_base(cls, base: str, meta: ModelMeta, *, device: str = "cpu", dtype="auto") -> AR:
        """A fresh AR: truncated base, identity value head (so step 0 predicts the backbone's own layer-K state)."""
        backbone = load_backbone(base, num_layers=meta.extraction_layer_index + 1, device=device, dtype=dtype)
        final_norm_to_identity(backbone)
        d_ar = backbone.config.hidden_size
        head = torch.nn.Linear(d_ar, meta.d_model, bias=False).to(device)
        with torch.no_grad():
            head.weight.copy_(torch.eye(meta.d_model, d_ar))
        return cls(backbone, load_tokenizer(base), meta, head)

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def prompts(self, explanations: list[str]) -> list[str]:
        return [self.meta.ar_template.format(explanation=e, quote=quoted_span(e)) for e in explanations]

    def encode(self, explanations: list[str], max_length: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids with special tokens added (BOS where the tokenizer uses one, as in extraction).

        Never truncated: cutting the prompt would drop the template's closing tokens, and the value would be read
        in the middle of the explanation."""
        if any(not e.strip() for e in explanations):
            raise NlakitError("an explanation is empty; the AR needs text to reconstruct from")
        enc = self.tok(self.prompts(explanations), add_special_tokens=True, padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(1)
        if int(lengths.max()) > max_length:
            i = int(lengths.argmax())
            raise NlakitError(
                f"explanation {i} is {int(lengths[i])} tokens with the AR template (limit {max_length}); shorten it"
            )
        dev = model_device(self.backbone)  # the first device when a device_map spreads the backbone
        return enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

    def fits(self, explanations: list[str], max_tokens: int) -> torch.Tensor:
        """[n] bool: which explanations, inside the AR template, are at most `max_tokens` AR tokens long."""
        return torch.tensor([len(ids) <= max_tokens for ids in self.tok(self.prompts(explanations))["input_ids"]])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with matmul_attention(self.backbone):  # on CPU, its backward beats SDPA's flash kernel ~3x at these sizes
            h = self.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = h[torch.arange(h.shape[0], device=h.device), last_token_index(mask.to(h.device))].to(self.device)
        return self.value_head(last.to(self.value_head.weight.dtype)).float()

    def loss(self, explanations: list[str], gold: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of mse_nrm at the sidecar's mse_scale (2(1-cos) at sqrt(d))."""
        ids, mask = self.encode(explanations)
        return mse_nrm(self(ids, mask), gold.to(self.device), self.meta.mse_scale).mean()

    @torch.no_grad()
    def reconstruct(self, explanations: list[str], batch_size: int = 32) -> torch.Tensor:
        """Predicted raw-space vectors [n, d] for a list of explanations, batched by length."""
        if isinstance(explanations, str):
            explanations = [explanations]
        order = sorted(range(len(explanations)), key=lambda i: len(explanations[i]))
        out = torch.empty(len(explanations), self.meta.d_model)
        was_training = self.training
        self.eval()
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            out[idx] = self(*self.encode([explanations[i] for i in idx])).cpu()
        self.train(was_training)
        return out

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with umask_modes(path):
            self.backbone.save_pretrained(path)
            save_file({"weight": self.value_head.weight.detach().contiguous().cpu()}, path / VALUE_HEAD)
        self.tok.save_pretrained(path)
        write_model_meta(path, self.meta)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype="auto",
        trainable: bool = False,
        base: str | Path | None = None,
        device_map: str | dict | None = None,
    ) -> AR:
        """Load an AR folder: LoRA adapters over the truncated base, or full K+1-layer weights (ours or reference).
        `base` replaces the sidecar's base model with a local folder (for adapters); `device_map` as in AV."""
        path = Path(path)
        if not path.is_dir():
            raise NlakitError(f"no AR folder at {path}")
        meta = read_model_meta(path)
        base = str(base) if base else meta.base_checkpoint
        if meta.role != "ar":
            raise NlakitError(f"{path} holds an {meta.role.upper()} checkpoint, not an AR")
        if meta.mse_scale is None:
            raise NlakitError(f"{path}: the AR sidecar has mse_scale null; nlakit compares normalised vectors only")
        if not (path / VALUE_HEAD).is_file():
            raise NlakitError(f"{path} has no {VALUE_HEAD}; an AR checkpoint needs its value head")
        n = meta.extraction_layer_index + 1
        if (path / "adapter_config.json").is_file():
            backbone = load_backbone(base, num_layers=n, device=device, dtype=dtype, device_map=device_map)
            backbone = with_adapters(backbone, path, trainable)
        else:
            stored = load_config(path).num_hidden_layers
            if stored != n:
                raise NlakitError(
                    f"{path}/config.json has {stored} layers but the sidecar's K={n - 1} needs K+1={n}; "
                    "the checkpoint and its sidecar disagree"
                )
            backbone = load_backbone(path, device=device, dtype=dtype, device_map=device_map)
        final_norm_to_identity(backbone.base_model.model if hasattr(backbone, "peft_config") else backbone)
        w = load_file(path / VALUE_HEAD)["weight"]
        head = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            head.weight.copy_(w)
        tok_src = path if (path / "tokenizer_config.json").is_file() else base
        ar = cls(backbone, load_tokenizer(tok_src), meta, head.to(device))
        ar.train(trainable)
        return ar
