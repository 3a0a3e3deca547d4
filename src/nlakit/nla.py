"""The `NLA` object: an AV and an AR for one target model and layer. One implementation behind CLI, web and eval.

Folder layout (Hugging Face conventions, reference-compatible role folders):
    NLA/nla_meta.yaml            kind: nla_pair (target, layer, av_base, ar_base)
    NLA/av/                      AV: LoRA adapters or full weights, tokenizer, nla_meta.yaml (role av)
    NLA/ar/                      AR: adapters or K+1-layer weights, value_head.safetensors, nla_meta.yaml (role ar)
The reference's released pair (two separate folders, full weights, actor/critic or av/ar sidecars) loads with
`NLA.from_pretrained(av=..., ar=...)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nlakit.ar import AR
from nlakit.av import AV
from nlakit.errors import NlakitError
from nlakit.extract import LayerCapture
from nlakit.maths import cosine, fve_nrm, mse_nrm
from nlakit.meta import META_NAME, read_yaml, write_yaml

PACKAGED = Path(__file__).parent / "assets" / "nla"
EXPLAIN_BATCH = 64  # positions per AV generation in `NLA.explain`


def resolve_nla_path(name: str | Path) -> Path:
    """A folder, or the name of an NLA shipped inside the package (e.g. `smollm2-135m-L20`)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if (PACKAGED / str(name)).is_dir():
        return PACKAGED / str(name)
    shipped = sorted(p.name for p in PACKAGED.glob("*") if p.is_dir()) if PACKAGED.is_dir() else []
    raise NlakitError(
        f"no NLA at {name!r}; pass a folder with av/ and ar/, or a shipped name ({', '.join(shipped) or 'none'})"
    )


@dataclass
class TokenExplanation:
    position: int
    token: str
    explanation: str
    cos: float
    mse_nrm: float
    fve_nrm: float | None  # None when the AR sidecar does not record its training rawvar
    norm: float  # raw activation norm

    def to_dict(self) -> dict:
        return asdict(self)


class NLA:
    def __init__(self, av: AV | None, ar: AR | None):
        if av is None and ar is None:
            raise NlakitError("an NLA needs at least an AV or an AR")
        if av and ar:
            # an unscrubbed reference AV sidecar records no layer: take it from the AR
            for a, b in ((av, ar), (ar, av)):
                if a.meta.extraction_layer_index < 0:
                    a.meta.extraction_layer_index = b.meta.extraction_layer_index
            if av.meta.d_model != ar.meta.d_model or av.meta.extraction_layer_index != ar.meta.extraction_layer_index:
                raise NlakitError(
                    f"AV (d={av.meta.d_model}, K={av.meta.extraction_layer_index}) and AR (d={ar.meta.d_model}, "
                    f"K={ar.meta.extraction_layer_index}) were trained for different activations"
                )
        self.av, self.ar = av, ar
        self._target = self._target_lm = self._target_tok = None
        self.dtype = "auto"
        meta = (av or ar).meta
        self.target, self.layer, self.d_model = (
            meta.target or meta.base_checkpoint,
            meta.extraction_layer_index,
            meta.d_model,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        av: str | Path | None = None,
        ar: str | Path | None = None,
        device: str = "cpu",
        dtype="auto",
    ) -> NLA:
        if path is not None:
            root = resolve_nla_path(path)
            av = av or (root / "av" if (root / "av" / META_NAME).is_file() else None)
            ar = ar or (root / "ar" if (root / "ar" / META_NAME).is_file() else None)
            if av is None and ar is None:
                raise NlakitError(f"{root} has neither av/{META_NAME} nor ar/{META_NAME}; is it an NLA folder?")
        nla = cls(
            AV.from_pretrained(av, device=device, dtype=dtype) if av else None,
            AR.from_pretrained(ar, device=device, dtype=dtype) if ar else None,
        )
        nla.dtype = dtype
        return nla

    @property
    def rawvar(self) -> float | None:
        """The training distribution's FVE denominator, recorded in the AR sidecar by AR SFT."""
        return ((self.ar.meta.training or {}).get("rawvar_baseline") if self.ar else None) or None

    def target_backbone(self):
        """The target truncated to blocks 0..K (loaded once), for reading activations."""
        if self._target is None:
            from nlakit.models import load_backbone

            device = (self.av or self.ar).device
            self._target = load_backbone(self.target, num_layers=self.layer + 1, device=str(device), dtype=self.dtype)
        return self._target

    def target_lm(self):
        """The whole target with its LM head (loaded once), for next-token distributions, patching and steering."""
        if self._target_lm is None:
            from nlakit.models import load_causal_lm

            device = (self.av or self.ar).device
            self._target_lm = load_causal_lm(self.target, device=str(device), dtype=self.dtype)
        return self._target_lm

    def target_tokenizer(self):
        if self._target_tok is None:
            from nlakit.models import load_tokenizer

            self._target_tok = load_tokenizer(self.target)
        return self._target_tok

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as the NLA reads it (as in extraction), without running a model."""
        if not text.strip():
            raise NlakitError("the text is empty; give at least one word to explain")
        return self.target_tokenizer()(text, add_special_tokens=True, truncation=True, max_length=1024)["input_ids"]

    @torch.no_grad()
    def activations(self, text: str) -> tuple[list[int], torch.Tensor]:
        """Token ids of `text` (`tokenize`) and the layer-K residual stream at every position [T, d]."""
        ids = self.tokenize(text)
        model = self.target_backbone()
        cap = LayerCapture(model, [self.layer])
        try:
            model(input_ids=torch.tensor([ids], device=next(model.parameters()).device), use_cache=False)
        finally:
            cap.remove()
        return ids, cap.outputs[self.layer][0].float().cpu()

    def explain(
        self,
        text: str,
        positions: list[int] | None = None,
        *,
        max_new_tokens: int = 120,
        temperature: float = 0.0,
        seed: int | None = None,
        batch_size: int = EXPLAIN_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> list[TokenExplanation]:
        """Explain `text` token by token: read each position's activation once, verbalise them in batched
        generations of at most `batch_size` (evenly sized: a small last batch would cost a whole decode pass), then
        reconstruct each explanation and score it. `progress(n)` is called after each batch with the positions done.
        Position 0 (an attention sink) is skipped unless asked for."""
        if self.av is None or self.ar is None:
            raise NlakitError("explain needs both an AV and an AR")
        ids, acts = self.activations(text)
        positions = list(range(1 if len(ids) > 1 else 0, len(ids))) if positions is None else positions
        bad = [p for p in positions if not 0 <= p < len(ids)]
        if bad:
            raise NlakitError(f"position {bad[0]} is outside the text's {len(ids)} tokens (0..{len(ids) - 1})")
        vectors = acts[positions]
        # even batches: 40 positions are one batch of 40, 100 are two of 50 (decode steps cost about the same for any
        # small batch on a CPU, and the KV cache of one batch of 1,000 rows would take gigabytes)
        size = math.ceil(len(positions) / max(1, math.ceil(len(positions) / batch_size))) if positions else 1
        texts: list[str] = []
        for b in range(0, len(positions), size):
            texts += self.av.verbalize(
                vectors[b : b + size],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
                batch_size=size,
            )
            if progress is not None:
                progress(len(texts))
        scores = self.score(texts, vectors)
        rawvar = self.rawvar
        out = []
        for i, p in enumerate(positions):
            mse = float(scores["mse_nrm"][i])
            out.append(
                TokenExplanation(
                    position=p,
                    token=self.target_tokenizer().decode([ids[p]]),
                    explanation=texts[i],
                    cos=float(scores["cos"][i]),
                    mse_nrm=mse,
                    fve_nrm=float(fve_nrm(mse, rawvar)) if rawvar else None,
                    norm=float(vectors[i].norm()),
                )
            )
        return out

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        if self.av:
            self.av.save_pretrained(path / "av")
        if self.ar:
            self.ar.save_pretrained(path / "ar")
        write_pair_meta(path)

    def verbalize(self, vectors, **kwargs) -> list[str]:
        if self.av is None:
            raise NlakitError("this NLA has no AV; load one with av=PATH")
        return self.av.verbalize(vectors, **kwargs)

    def reconstruct(self, texts: str | list[str]) -> torch.Tensor:
        if self.ar is None:
            raise NlakitError("this NLA has no AR; load one with ar=PATH")
        return self.ar.reconstruct([texts] if isinstance(texts, str) else texts)

    def score(self, texts: list[str], vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """mse_nrm and cosine of each text's reconstruction against its vector. An empty text (an AV that stopped at
        once) scores as an orthogonal prediction: mse_nrm 2, cos 0."""
        gold = torch.as_tensor(vectors, dtype=torch.float32)
        return score_texts(self.ar, texts, gold)


def score_texts(ar: AR, texts: list[str], gold: torch.Tensor) -> dict[str, torch.Tensor]:
    mse, cos = torch.full((len(texts),), 2.0), torch.zeros(len(texts))
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if keep:
        pred = ar.reconstruct([texts[i] for i in keep])
        mse[keep] = mse_nrm(pred, gold[keep], ar.meta.mse_scale)
        cos[keep] = cosine(pred, gold[keep])
    return {"mse_nrm": mse, "cos": cos}


def write_pair_meta(path: str | Path) -> None:
    """The top-level sidecar of an NLA folder: what the pair explains, and with which bases."""
    path = Path(path)
    data = {"kind": "nla_pair", "schema_version": 1}
    for role in ("av", "ar"):
        side = path / role / META_NAME
        if side.is_file():
            m = read_yaml(side)
            data.update(
                target=m.get("target", m.get("base_checkpoint")),
                d_model=m["d_model"],
                extraction_layer_index=m.get("extraction_layer_index"),
            )
            data[f"{role}_base"] = m.get("base_checkpoint")
            data[role] = role + "/"
    write_yaml(path / META_NAME, data)


def export(src: str | Path, dest: str | Path, dtype: str = "bfloat16") -> dict[str, int]:
    """Copy an NLA folder for shipping, with LoRA adapter weights stored in `dtype` (half the bytes in bf16; they are
    cast back to the base model's dtype on load). Returns the bytes of each written file."""
    import shutil

    from safetensors.torch import load_file, save_file

    from nlakit.io import atomic_write

    src, dest = resolve_nla_path(src), Path(dest)
    if dest.resolve() == src.resolve():
        raise NlakitError("export needs a destination other than the source folder")
    want = getattr(torch, dtype, None)
    if not isinstance(want, torch.dtype):
        raise NlakitError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    sizes = {}
    for f in sorted(src.rglob("*")):
        if not f.is_file() or f.parts[len(src.parts)].startswith("train"):
            continue  # run state (checkpoints, logs) stays behind
        out = dest / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.name == "adapter_model.safetensors":
            tensors = {k: v.to(want).contiguous() for k, v in load_file(f).items()}
            atomic_write(out, lambda tmp, t=tensors: save_file(t, tmp, metadata={"format": "pt"}))
        else:
            atomic_write(out, lambda tmp, f=f: shutil.copyfile(f, tmp))
        sizes[str(out.relative_to(dest))] = out.stat().st_size
    if not (dest / "av").is_dir() and not (dest / "ar").is_dir():
        raise NlakitError(f"{src} has no av/ or ar/ folder to export")
    write_pair_meta(dest)
    return sizes
