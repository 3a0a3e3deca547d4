"""Typed recipe configs, loadable from YAML with `key=value` overrides (no environment variables)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from nlakit.errors import NlakitError

T = TypeVar("T")


@dataclass
class SFTConfig:
    """One config for both SFT recipes (`injection_scale` is read by the AV recipe only)."""

    data: str  # activations dataset with an explanation column
    out: str  # NLA folder: the recipe writes out/ar or out/av, and its run state under out/train_<role>
    val_data: str | None = None
    base: str | None = None  # AR/AV base model; default: the dataset's target model
    explanation_column: str = "explanation"
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"  # or "constant"
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 500  # raise it to continue a finished run: it resumes from its last checkpoint
    epochs: float | None = None  # when set, overrides max_steps: this many passes over the training pairs
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"  # weight dtype; compute goes through autocast
    autocast: str = "auto"  # auto (bf16 only where the CPU/GPU runs it faster), bfloat16, float16 or none
    save_every: int = 100
    eval_every: int = 50
    log_every: int = 10
    eval_rows: int = 256
    eval_fve_rows: int = 0  # AV: also verbalise this many val rows and score them with out/ar (0: loss only)
    eval_max_new_tokens: int = 120
    max_length: int = 512
    injection_scale: float | None = None  # AV: None picks a round number a bit above the mean activation norm
    av_template: str | None = None  # AV prompt with one {injection_char}; None = the reference's template


def _coerce(value: str, typ: Any) -> Any:
    text = str(typ)
    if value.lower() in ("none", "null") and "None" in text:
        return None
    if "bool" in text:
        if value.lower() not in ("true", "false", "1", "0"):
            raise NlakitError(f"{value!r} is not a boolean; use true or false")
        return value.lower() in ("true", "1")
    for kind in (int, float):
        if kind.__name__ in text:
            try:
                return kind(value)
            except ValueError:
                continue
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from a YAML file and `key=value` overrides; unknown keys are an error, not silently dropped."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise NlakitError(f"config {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
    hints = get_type_hints(cls)
    for item in overrides or []:
        if "=" not in item:
            raise NlakitError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        if key not in hints:
            raise NlakitError(f"unknown config key {key!r}; valid keys: {', '.join(hints)}")
        data[key] = _coerce(value, hints[key])
    unknown = set(data) - set(hints)
    if unknown:
        raise NlakitError(f"unknown config key(s) {sorted(unknown)}; valid keys: {', '.join(hints)}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
    ]
    if missing:
        raise NlakitError(f"config is missing {missing}; set them in the YAML or as key=value")
    return cls(**data)


def dump_config(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
