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
from nlakit.config import DEFAULT_NLA, ModelConfig
from nlakit.errors import NlakitError
from nlakit.extract import LayerCapture
from nlakit.io import umask_modes
from nlakit.maths import cosine, fve_nrm, mse_nrm
from nlakit.meta import META_NAME, read_yaml, write_yaml
from nlakit.models import check_device, resolve_dtype

PACKAGED = Path(__file__).parent / "assets" / "nla"
VALUE_HEAD_FILE = "value_head.safetensors"
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
class ActivationCache:
    ids: list[int]
    resid: torch.Tensor  # [T, d] residual stream after block K, float32 on the CPU
    logits: torch.Tensor | None  # [n, V] next-token logits at the positions asked for, or None


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
        metas = [side.meta for side in (av, ar) if side is not None]
        # an unscrubbed reference AV sidecar records no layer (-1): the pair's K is the one its sidecars record.
        # The sidecars themselves are left as given (they are saved back as they were loaded).
        layers = {m.extraction_layer_index for m in metas if m.extraction_layer_index >= 0}
        if len(layers) > 1 or len({m.d_model for m in metas}) > 1:
            raise NlakitError(
                f"AV (d={av.meta.d_model}, K={av.meta.extraction_layer_index}) and AR (d={ar.meta.d_model}, "
                f"K={ar.meta.extraction_layer_index}) were trained for different activations"
            )
        self.av, self.ar = av, ar
        self._target = self._target_lm = self._target_tok = None
        self.dtype = "auto"
        self.device_map: str | dict | None = None
        self.rawvar_override: float | None = None  # --rawvar, or computed from --data (rawvar_from_data)
        meta = (av or ar).meta
        self.target, self.layer, self.d_model = (
            meta.target or meta.base_checkpoint,
            max(layers, default=-1),
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
        target: str | Path | None = None,
        layer: int | None = None,
        injection_scale: float | None = None,
        rawvar: float | None = None,
        device_map: str | dict | None = None,
    ) -> NLA:
        """Load an NLA folder (av/ + ar/) or separate `av`/`ar` folders (the reference's releases).

        `target`: a local folder for the model whose activations are explained (released sidecars name a Hub id);
        it is also the base of adapter checkpoints whose base is that same model. `layer`: K for an AV whose
        sidecar records none (an unscrubbed `actor` sidecar) and no AR to take it from. `injection_scale`:
        overrides the AV sidecar's. `rawvar`: the FVE denominator when the AR sidecar records none.
        `device_map`: accelerate placement for models too big for one device."""
        if path is not None:
            root = resolve_nla_path(path)
            av = av or (root / "av" if (root / "av" / META_NAME).is_file() else None)
            ar = ar or (root / "ar" if (root / "ar" / META_NAME).is_file() else None)
            if av is None and ar is None:
                raise NlakitError(f"{root} has neither av/{META_NAME} nor ar/{META_NAME}; is it an NLA folder?")
        kw = {"device": device, "dtype": dtype, "device_map": device_map}
        nla = cls(
            AV.from_pretrained(av, injection_scale=injection_scale, **kw, **_base_for(av, target)) if av else None,
            AR.from_pretrained(ar, **kw, **_base_for(ar, target)) if ar else None,
        )
        if layer is not None:
            if nla.layer >= 0 and nla.layer != layer:
                raise NlakitError(f"--layer {layer} disagrees with the sidecars' layer {nla.layer}")
            nla.layer = layer
        if target is not None:
            nla.target = str(target)
        nla.dtype, nla.device_map, nla.rawvar_override = dtype, device_map, rawvar
        return nla

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> NLA:
        """The NLA a command's config names (`nlakit.config.ModelConfig`): the shipped default when it names none,
        rawvar computed from `cfg.data` when it is not given."""
        check_device(cfg.device)  # a bad device or dtype in a YAML is named before any path is looked at
        if str(cfg.dtype).lower() != "auto":
            resolve_dtype(cfg.dtype, cfg.device)
        rawvar = cfg.rawvar if cfg.rawvar is not None or cfg.data is None else rawvar_from_data(cfg.data)
        return cls.from_pretrained(
            cfg.nla if cfg.nla or cfg.av or cfg.ar else DEFAULT_NLA,
            av=cfg.av,
            ar=cfg.ar,
            device=cfg.device,
            dtype=cfg.dtype,
            target=cfg.target,
            layer=cfg.layer,
            injection_scale=cfg.injection_scale,
            rawvar=rawvar,
            device_map=cfg.device_map,
        )

    @property
    def rawvar(self) -> float | None:
        """The FVE denominator: given (`rawvar=`, `--rawvar`, `--data`), else recorded in the AR sidecar by AR SFT
        (released sidecars record none: then fve is None unless one is given)."""
        if self.rawvar_override:
            return self.rawvar_override
        return ((self.ar.meta.training or {}).get("rawvar_baseline") if self.ar else None) or None

    def _check_layer(self) -> None:
        if self.layer < 0:
            raise NlakitError(
                "the AV sidecar records no extraction layer (an unscrubbed `actor` sidecar): pass --layer K "
                "(layer=K) or load its AR, whose sidecar records it"
            )

    def target_backbone(self):
        """The target truncated to blocks 0..K (loaded once), for reading activations."""
        if self._target is None:
            from nlakit.models import load_backbone

            self._check_layer()
            device = (self.av or self.ar).device
            self._target = load_backbone(
                self.target, num_layers=self.layer + 1, device=str(device), dtype=self.dtype, device_map=self.device_map
            )
        return self._target

    def target_lm(self):
        """The whole target with its LM head (loaded once), for next-token distributions, patching and steering."""
        if self._target_lm is None:
            from nlakit.models import load_causal_lm

            device = (self.av or self.ar).device
            self._target_lm = load_causal_lm(
                self.target, device=str(device), dtype=self.dtype, device_map=self.device_map
            )
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
    def run_with_cache(self, text: str | list[int], logits: bool | list[int] = False) -> ActivationCache:
        """The one activation reader (TransformerLens's `run_with_cache`): token ids of `text` (as `tokenize`, or
        given), the layer-K residual stream at every position, and optionally the next-token logits: `logits=True`
        at every position, a list of positions only there (a 49k-wide LM head at every position is most of the
        cost). Without logits only blocks 0..K run."""
        ids = self.tokenize(text) if isinstance(text, str) else list(text)
        model = self.target_backbone() if logits is False else self.target_lm()
        kw = {} if logits is False else {"logits_to_keep": torch.tensor(range(len(ids)) if logits is True else logits)}
        with LayerCapture(model, [self.layer]) as cap:
            out = model(input_ids=torch.tensor([ids], device=next(model.parameters()).device), use_cache=False, **kw)
        resid = cap.outputs[self.layer][0].float().cpu()
        return ActivationCache(ids, resid, None if logits is False else out.logits[0].float().cpu())

    def activations(self, text: str) -> tuple[list[int], torch.Tensor]:
        """Token ids of `text` and the layer-K residual stream at every position [T, d] (`run_with_cache`)."""
        cache = self.run_with_cache(text)
        return cache.ids, cache.resid

    def explain(
        self,
        text: str,
        positions: list[int] | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        batch_size: int = EXPLAIN_BATCH,
        best_of: int = 1,
        sample_temperature: float = 1.0,
        progress: Callable[[int], None] | None = None,
    ) -> list[TokenExplanation]:
        """Explain `text` token by token: read each position's activation once, verbalise them in batched
        generations of at most `batch_size` (evenly sized: a small last batch would cost a whole decode pass), then
        reconstruct each explanation and score it (`best_of` > 1: the best of that many candidates, `pick_best`;
        it multiplies the generation time). `progress(n)` is called after each batch with the positions done.
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
            texts += self.verbalize(
                vectors[b : b + size],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
                batch_size=size,
                **({"best_of": best_of, "sample_temperature": sample_temperature} if best_of > 1 else {}),
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

    def verbalize(self, vectors, *, best_of: int = 1, **kwargs) -> list[str]:
        """Explanations of raw vectors [n, d]; `best_of` > 1 picks each row's best of that many candidates
        (`candidates`, `pick_best`)."""
        if self.av is None:
            raise NlakitError("this NLA has no AV; load one with av=PATH")
        if best_of <= 1:
            return self.av.verbalize(vectors, **kwargs)
        vectors = torch.as_tensor(vectors, dtype=torch.float32).reshape(-1, self.av.meta.d_model)
        return self.pick_best(self.candidates(vectors, best_of, **kwargs), vectors)[0]

    def candidates(
        self, vectors: torch.Tensor, best_of: int, *, sample_temperature: float = 1.0, seed: int | None = 0, **kwargs
    ) -> list[list[str]]:
        """`best_of` explanations per row [n][best_of]: the one asked for (greedy by default) first, then
        `best_of` - 1 samples at `sample_temperature` (seeded, None meaning 0: the same call gives the same
        candidates)."""
        seed = 0 if seed is None else seed
        first = self.av.verbalize(vectors, seed=seed, **kwargs)
        if best_of <= 1:
            return [[t] for t in first]
        kwargs.pop("temperature", None)
        more = self.av.verbalize(
            vectors.repeat_interleave(best_of - 1, 0), temperature=sample_temperature, seed=seed, **kwargs
        )
        return [[first[i], *more[i * (best_of - 1) : (i + 1) * (best_of - 1)]] for i in range(len(first))]

    def pick_best(self, candidates: list[list[str]], vectors: torch.Tensor) -> tuple[list[str], list[int]]:
        """AR-verified selection: for each row, the candidate whose reconstruction is nearest its own vector (the
        explainer holds the vector it explains, so this needs nothing a user lacks). The first candidate wins ties.
        What the pick gains over one sample has to survive another AR and the meaning-preserving probes, which
        `nla eval` reports for the picked text."""
        if candidates and len(candidates[0]) == 1:
            return [row[0] for row in candidates], [0] * len(candidates)
        best = self.candidate_scores(candidates, vectors).argmin(1).tolist()  # argmin returns the first minimum
        return [row[j] for row, j in zip(candidates, best, strict=True)], best

    def candidate_scores(self, candidates: list[list[str]], vectors: torch.Tensor) -> torch.Tensor:
        """mse_nrm of every candidate against its row's vector [n, k]."""
        if self.ar is None:
            raise NlakitError("picking the best explanation needs an AR; load one with ar=PATH")
        k = len(candidates[0]) if candidates else 1
        flat = [t for row in candidates for t in row]
        return self.score(flat, torch.as_tensor(vectors).repeat_interleave(k, 0))["mse_nrm"].view(-1, k)

    def reconstruct(self, texts: str | list[str]) -> torch.Tensor:
        if self.ar is None:
            raise NlakitError("this NLA has no AR; load one with ar=PATH")
        return self.ar.reconstruct([texts] if isinstance(texts, str) else texts)

    def score(self, texts: list[str], vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """mse_nrm and cosine of each text's reconstruction against its vector. An empty text (an AV that stopped at
        once) scores as an orthogonal prediction: mse_nrm 2, cos 0."""
        gold = torch.as_tensor(vectors, dtype=torch.float32)
        return score_texts(self.ar, texts, gold)


def load_ar(path: str | Path, *, device: str = "cpu", dtype="auto") -> AR:
    """An AR from its own folder, or from an NLA folder (or shipped name) that holds one under ar/."""
    root = resolve_nla_path(path)
    return AR.from_pretrained(root / "ar" if (root / "ar" / META_NAME).is_file() else root, device=device, dtype=dtype)


def _base_for(folder: str | Path, target: str | Path | None) -> dict:
    """`base=target` for a checkpoint whose base is its target (adapters over a Hub-id base); a different base (an
    AV or AR on another model) is left to its sidecar."""
    if target is None:
        return {}
    meta = read_yaml(Path(folder) / META_NAME)
    base = meta.get("base_checkpoint", "")
    return {"base": target} if base == meta.get("target", base) else {}


def rawvar_from_data(path: str | Path, max_rows: int = 50_000) -> float:
    """The FVE denominator of a dataset's activations (the reference's rawvar baseline over up to 50k rows)."""
    from nlakit import dataset as ds
    from nlakit.maths import rawvar_baseline

    vectors = ds.vectors_of(ds.read_table(path, ["activation_vector"]).slice(0, max_rows))
    if len(vectors) < 2:
        raise NlakitError(f"{path} has {len(vectors)} vectors; rawvar needs at least 2")
    return rawvar_baseline(torch.from_numpy(vectors))


def score_texts(ar: AR, texts: list[str], gold: torch.Tensor) -> dict[str, torch.Tensor]:
    """mse_nrm, cos and the reconstructions `pred` (zero rows for empty texts, which score mse 2, cos 0)."""
    mse, cos = torch.full((len(texts),), 2.0), torch.zeros(len(texts))
    pred = torch.zeros(len(texts), gold.shape[-1])
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if keep:
        pred[keep] = ar.reconstruct([texts[i] for i in keep])
        mse[keep] = mse_nrm(pred[keep], gold[keep], ar.meta.mse_scale)
        cos[keep] = cosine(pred[keep], gold[keep])
    return {"mse_nrm": mse, "cos": cos, "pred": pred}


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


def export_merged(
    src: str | Path, dest: str | Path, dtype: str = "bfloat16", target: str | Path | None = None
) -> dict[str, int]:
    """Write an NLA with full weights in the reference's release layout, LoRA merged in:
    - `av/`: the whole causal LM, tokenizer, sidecar (role av, with extraction_layer_index);
    - `ar/`: a causal LM of K+1 blocks whose final norm and lm_head are Identity (so neither is saved),
      `value_head.safetensors` ({"weight": [d, d]}), the tokenizer saved with right padding, sidecar (role ar,
      critic.extraction_layer_index).
    The reference's `NLAClient`/`NLACritic` (and nlakit) load these folders as they load a released NLA."""
    import shutil

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from nlakit.meta import write_model_meta
    from nlakit.models import _quiet_transformers, final_norm_to_identity, parse_dtype

    want = parse_dtype(dtype)
    src, dest = resolve_nla_path(src), Path(dest)
    if dest.resolve() == src.resolve():
        raise NlakitError("export needs a destination other than the source folder")
    nla = NLA.from_pretrained(src, dtype="float32", target=target)  # adapters merged on load (trainable=False)
    if nla.ar is not None and "{quote}" in nla.ar.meta.ar_template:
        # the reference's critic builds its prompt without the quote, so it would read this AR wrongly, and silently
        raise NlakitError(
            "this AR reads with nlakit's {quote} template, which the reference's code does not fill; "
            "export it without --merge (nlakit's layout keeps the template)"
        )
    sizes: dict[str, int] = {}
    with _quiet_transformers(), umask_modes(dest):
        if nla.av is not None:
            out = dest / "av"
            nla.av.model.to(want).save_pretrained(out)
            nla.av.tok.save_pretrained(out)
            if (src / "av" / "input_proj.safetensors").is_file():
                shutil.copyfile(src / "av" / "input_proj.safetensors", out / "input_proj.safetensors")
            write_model_meta(out, nla.av.meta)
        if nla.ar is not None:
            out = dest / "ar"
            backbone = nla.ar.backbone
            causal = AutoModelForCausalLM.from_config(backbone.config)
            causal.model = backbone  # the truncated, merged stack; its final norm is already Identity
            final_norm_to_identity(causal)
            causal.lm_head = torch.nn.Identity()
            causal.config.tie_word_embeddings = False  # nothing to tie: the AR has no lm_head
            causal.to(want).save_pretrained(out)
            tok = nla.ar.tok
            tok.padding_side = "right"
            tok.save_pretrained(out)
            weight = nla.ar.value_head.weight.detach().to(want).contiguous().cpu()
            save_file({"weight": weight}, out / VALUE_HEAD_FILE)
            write_model_meta(out, nla.ar.meta)
    write_pair_meta(dest)
    for f in sorted(dest.rglob("*")):
        if f.is_file():
            sizes[str(f.relative_to(dest))] = f.stat().st_size
    return sizes


def export(src: str | Path, dest: str | Path, dtype: str = "bfloat16", merge: bool = False) -> dict[str, int]:
    """Copy an NLA folder for shipping, with LoRA adapter weights stored in `dtype` (half the bytes in bf16; they are
    cast back to the base model's dtype on load). Returns the bytes of each written file. `merge=True` writes full
    weights in the reference's release layout instead (`export_merged`)."""
    import shutil

    if merge:
        return export_merged(src, dest, dtype)

    from safetensors.torch import load_file, save_file

    from nlakit.io import atomic_write

    src, dest = resolve_nla_path(src), Path(dest)
    if dest.resolve() == src.resolve():
        raise NlakitError("export needs a destination other than the source folder")
    from nlakit.models import parse_dtype

    want = parse_dtype(dtype)
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
