"""Typed sidecars (`nla_meta.yaml`), compatible with the reference implementation's schema (NLA_REFERENCE §1.8).

Two kinds:
- `nla_dataset` (schema 1): beside every activations dataset; records how the vectors were made.
- `nla_model` (schema 2): inside every AV or AR checkpoint; records scales, marker tokens, templates and layer.

Reference readers accept both `actor/critic` and `av/ar` names; so do we, and we write `av/ar`. Fields we add
(`target`, `av_base`, `ar_base`, extraction details) are extra keys the reference ignores.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nlakit.errors import NlakitError
from nlakit.io import atomic_write_text

META_NAME = "nla_meta.yaml"

# Reference templates (NLA_REFERENCE §1.3, §1.5); `{injection_char}` / `{explanation}` are filled at use.
AV_TEMPLATE = (
    "You are a meticulous AI researcher conducting an important investigation into activation vectors from a "
    "language model. Your overall task is to describe the semantic content of that activation vector.\n\n"
    "We will pass the vector enclosed in <concept> tags into your context. You must then produce an explanation "
    "for the vector, enclosed within <explanation> tags. The explanation consists of 2-3 text snippets describing "
    "that vector.\n\nHere is the vector:\n\n<concept>{injection_char}</concept>\n\nPlease provide an explanation."
)
AR_TEMPLATE = "Summary of the following text: <text>{explanation}</text> <summary>"
# nlakit's extension, not the reference's: the explanation's quote once more after the template (`ar.quoted_span`), so
# that the AR's last token is the quoted words' last token. The truncated target then re-reads those words in order
# as it read the original context, and the layer-K state it reaches there is most of the vector (recipes/smollm2-L20:
# the last 4 words of a context, rerun alone, explain 0.55 of its variance before any training).
AR_QUOTE_TEMPLATE = AR_TEMPLATE + "{quote}"
REFERENCE_MAX_NEW_TOKENS = 200  # nla_inference.NLAClient's default; RL trained with a 150-token cap


@dataclass
class Tokens:
    injection_char: str
    injection_token_id: int
    injection_left_neighbor_id: int
    injection_right_neighbor_id: int
    critic_suffix_ids: list[int] | None = None


@dataclass
class Extraction:
    """How the vectors were taken. `layer_index` K means the residual stream after block K (HF hidden_states[K+1])."""

    base_model: str
    d_model: int
    layer_index: int
    norm: str = "none"
    corpus: str | None = None
    corpus_slice: dict[str, int] | None = None
    positions_per_doc: int | None = None
    min_position: int | None = None
    max_tokens: int | None = None
    seed: int | None = None
    dtype: str | None = None
    mean_norm: float | None = None


@dataclass
class DatasetMeta:
    extraction: Extraction
    dataset_id: str = ""
    stage: str = "base"
    row_count: int | None = None
    tokens: Tokens | None = None
    prompt_templates: dict[str, str] | None = None
    api_summaries: dict[str, Any] | None = None
    parent_datasets: list[str] | None = None
    created_at: str = ""
    created_by: str = "nlakit"
    kind: str = "nla_dataset"
    schema_version: int = 1


@dataclass
class ModelMeta:
    role: str  # "av" or "ar" (reference: actor / critic)
    d_model: int
    extraction_layer_index: int
    injection_scale: float | None
    mse_scale: float | None
    tokens: Tokens | None = None
    prompt_templates: dict[str, str] = field(default_factory=lambda: {"av": AV_TEMPLATE, "ar": AR_TEMPLATE})
    stage: str = "init"
    base_checkpoint: str = ""
    target: str = ""  # the model whose activations are explained
    trained_on: str | None = None
    parent_checkpoints: list[str] | None = None
    training: dict[str, Any] | None = None
    created_at: str = ""
    created_by: str = "nlakit"
    kind: str = "nla_model"
    schema_version: int = 2

    @property
    def av_template(self) -> str:
        return self.prompt_templates["av"]

    @property
    def ar_template(self) -> str:
        return self.prompt_templates["ar"]

    @property
    def max_new_tokens(self) -> int:
        """The generation cap the AV was trained under (RL rollouts end there), else the reference client's 200,
        which is above the reference's training cap of 150, so nothing a released AV was trained to write is cut."""
        training = self.training or {}
        for key in ("max_new_tokens", "rollout_max_response_len"):
            if isinstance(training.get(key), int) and training[key] > 0:
                return int(training[key])
        return REFERENCE_MAX_NEW_TOKENS


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    return obj


def _templates_in(raw: dict[str, Any] | None) -> dict[str, str] | None:
    if not raw:
        return None
    out = {}
    for ours, theirs in (("av", "actor"), ("ar", "critic")):
        value = raw.get(ours, raw.get(theirs))
        if value is not None:
            out[ours] = value
    return out


def _tokens_in(raw: dict[str, Any] | None) -> Tokens | None:
    if not raw:
        return None
    names = {f.name for f in dataclasses.fields(Tokens)}
    return Tokens(**{k: v for k, v in raw.items() if k in names})


def resolve_scale(value: Any, d_model: int) -> float | None:
    """Resolve a scale setting: None/'raw'/'none' -> None, 'sqrt_d_model' -> sqrt(d), a number -> itself."""
    if value is None or (isinstance(value, str) and value.lower() in ("raw", "none")):
        return None
    if value == "sqrt_d_model":
        return math.sqrt(d_model)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise NlakitError(f"scale {value!r} is not a number, 'sqrt_d_model' or 'raw'") from None


# The reference builds `NLAExtractionMeta(**extraction)` and `NLAApiSummaryMeta(**api_summaries)`: strict dataclasses
# whose fields all lack defaults. So those two sections carry exactly these keys, and what nlakit records beyond them
# goes to top-level `nlakit_*` sections (the reference keeps only the top-level keys it knows).
REFERENCE_EXTRACTION_KEYS = (
    "base_model",
    "d_model",
    "layer_index",
    "norm",
    "corpus",
    "corpus_slice",
    "positions_per_doc",
)
REFERENCE_API_KEYS = ("model", "max_tokens", "temperature", "instruction_prompt")


def dataset_meta_to_dict(meta: DatasetMeta) -> dict[str, Any]:
    d = dataclasses.asdict(meta)
    ext = d.pop("extraction")
    extraction = {k: ext.get(k) for k in REFERENCE_EXTRACTION_KEYS}
    extraction["corpus"] = extraction["corpus"] or ""
    extraction["corpus_slice"] = extraction["corpus_slice"] or {"start": 0, "length": None}  # None: every document
    extraction["positions_per_doc"] = extraction["positions_per_doc"] or 0
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[k] = v
        if k == "stage":
            out["extraction"] = extraction
    extra = {k: v for k, v in ext.items() if k not in REFERENCE_EXTRACTION_KEYS and v is not None}
    if extra:
        out["nlakit_extraction"] = extra
    api = d.get("api_summaries")
    if api:
        out["api_summaries"] = {k: api.get(k) for k in REFERENCE_API_KEYS}
        rest = {k: v for k, v in api.items() if k not in REFERENCE_API_KEYS}
        if rest:
            out["nlakit_api_summaries"] = rest
    out = _drop_none(out)
    out["extraction"] = extraction  # nulls inside are part of the strict shape
    if api:
        out["api_summaries"] = {k: api.get(k) for k in REFERENCE_API_KEYS}
    return out


def dataset_meta_from_dict(raw: dict[str, Any]) -> DatasetMeta:
    if raw.get("kind") != "nla_dataset":
        raise NlakitError(f"sidecar kind is {raw.get('kind')!r}, expected 'nla_dataset'")
    ext_names = {f.name for f in dataclasses.fields(Extraction)}
    merged = {**(raw.get("extraction") or {}), **(raw.get("nlakit_extraction") or {})}
    if merged.get("layer_index") is None and raw["extraction"].get("checkpoints"):
        merged["layer_index"] = raw["extraction"]["checkpoints"][0].get("layer_index")  # schema 2, one checkpoint
    ext = Extraction(**{k: v for k, v in merged.items() if k in ext_names})
    api = raw.get("api_summaries")
    if api is not None or raw.get("nlakit_api_summaries"):
        api = {k: v for k, v in {**(api or {}), **(raw.get("nlakit_api_summaries") or {})}.items() if v is not None}
    return DatasetMeta(
        extraction=ext,
        dataset_id=raw.get("dataset_id", ""),
        stage=raw.get("stage", "base"),
        row_count=raw.get("row_count"),
        tokens=_tokens_in(raw.get("tokens")),
        prompt_templates=_templates_in(raw.get("prompt_templates")),
        api_summaries=api,
        parent_datasets=raw.get("parent_datasets"),
        created_at=raw.get("created_at", ""),
        created_by=raw.get("created_by", ""),
    )


def model_meta_to_dict(meta: ModelMeta) -> dict[str, Any]:
    """Reference schema v2 plus the release scrub's top-level `extraction_layer_index`."""
    d = {
        "kind": meta.kind,
        "schema_version": meta.schema_version,
        "role": meta.role,
        "stage": meta.stage,
        "base_checkpoint": meta.base_checkpoint,
        "target": meta.target or meta.base_checkpoint,
        "d_model": meta.d_model,
        "extraction": {"injection_scale": meta.injection_scale, "mse_scale": meta.mse_scale},
        "tokens": dataclasses.asdict(meta.tokens) if meta.tokens else None,
        "prompt_templates": dict(meta.prompt_templates),
        # an unscrubbed actor sidecar records no layer (-1 here): write none rather than a wrong one
        "extraction_layer_index": meta.extraction_layer_index if meta.extraction_layer_index >= 0 else None,
        "trained_on": meta.trained_on,
        "parent_checkpoints": meta.parent_checkpoints,
        "training": meta.training,
        "created_at": meta.created_at or _now(),
        "created_by": meta.created_by,
    }
    if meta.role == "ar":
        d["critic"] = {"extraction_layer_index": meta.extraction_layer_index}
    out = _drop_none(d)
    out["extraction"] = d["extraction"]  # nulls are meaningful here (AR: injection_scale null)
    return out


def model_meta_from_dict(raw: dict[str, Any]) -> ModelMeta:
    if raw.get("kind") != "nla_model":
        raise NlakitError(f"sidecar kind is {raw.get('kind')!r}, expected 'nla_model'")
    role = {"actor": "av", "critic": "ar"}.get(raw.get("role", ""), raw.get("role", ""))
    if role not in ("av", "ar"):
        raise NlakitError(f"sidecar role is {raw.get('role')!r}; expected av/ar (or actor/critic)")
    d_model = int(raw["d_model"])
    critic = raw.get("critic") or raw.get("ar") or {}
    layer = raw.get("extraction_layer_index", critic.get("extraction_layer_index"))
    if layer is None:  # schema v1 named the same K `num_hidden_layers` (docs: `ar: {num_hidden_layers: 20}` at L20)
        layer = critic.get("num_hidden_layers")
    ext = raw.get("extraction") or {}
    templates = _templates_in(raw.get("prompt_templates")) or {}
    templates.setdefault("av", AV_TEMPLATE)
    templates.setdefault("ar", AR_TEMPLATE)
    return ModelMeta(
        role=role,
        d_model=d_model,
        extraction_layer_index=int(layer) if layer is not None else -1,
        injection_scale=resolve_scale(ext.get("injection_scale"), d_model),
        mse_scale=resolve_scale(ext.get("mse_scale", "sqrt_d_model"), d_model),
        tokens=_tokens_in(raw.get("tokens")),
        prompt_templates=templates,
        stage=raw.get("stage", "init"),
        base_checkpoint=raw.get("base_checkpoint", ""),
        target=raw.get("target", raw.get("base_checkpoint", "")),
        trained_on=raw.get("trained_on"),
        parent_checkpoints=raw.get("parent_checkpoints"),
        training=raw.get("training"),
        created_at=raw.get("created_at", ""),
        created_by=raw.get("created_by", ""),
    )


def write_yaml(path: str | Path, data: dict[str, Any]) -> Path:
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise NlakitError(f"no sidecar at {path}: every nlakit artifact carries its {META_NAME}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise NlakitError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix or regenerate it") from None
    if not isinstance(data, dict):
        raise NlakitError(f"{path} is not a mapping; regenerate the sidecar")
    return data


def sidecar_path(artifact: str | Path) -> Path:
    """`DIR/nla_meta.yaml` for a folder, `X.parquet.nla_meta.yaml` for a single reference-style parquet."""
    p = Path(str(artifact).split("@[")[0])  # `data.parquet@[0:1000]` shares the file's sidecar
    return p.with_name(p.name + "." + META_NAME) if p.suffix == ".parquet" else p / META_NAME


def write_dataset_meta(artifact: str | Path, meta: DatasetMeta) -> Path:
    meta.created_at = meta.created_at or _now()
    return write_yaml(sidecar_path(artifact), dataset_meta_to_dict(meta))


def read_dataset_meta(artifact: str | Path) -> DatasetMeta:
    return dataset_meta_from_dict(read_yaml(sidecar_path(artifact)))


def write_model_meta(ckpt_dir: str | Path, meta: ModelMeta) -> Path:
    return write_yaml(Path(ckpt_dir) / META_NAME, model_meta_to_dict(meta))


def read_model_meta(ckpt_dir: str | Path) -> ModelMeta:
    return model_meta_from_dict(read_yaml(Path(ckpt_dir) / META_NAME))


def dataset_id(base_model: str, layer: int, *parts: Any) -> str:
    import hashlib

    h = hashlib.sha256("|".join(map(str, (base_model, layer, *parts))).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9.\-]+", "-", Path(base_model).name or base_model)
    return f"base_{name}_L{layer}_{h}"
