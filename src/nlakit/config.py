"""Every command's typed config, in one place, and one loader: a YAML file and/or `key=value` overrides.

The dataclasses are plain data (no torch import), so the CLI can check a config in milliseconds before a model loads.
Each stage's module reads its config from here; the CLI maps flags onto these fields (`load_config(values=...)`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from nlakit.errors import NlakitError

T = TypeVar("T")

DEFAULT_MIN_POSITION = 16  # earliest token position sampled: the first tokens' activations are atypical (sink)
DEFAULT_NLA = "smollm2-135m-L20"  # the NLA shipped inside the package: what every command loads by default


@dataclass
class SamplingConfig:
    """How an explanation (or any continuation) is decoded."""

    max_new_tokens: int = 150
    min_new_tokens: int = 0  # benchmarks force equal lengths; EOS before this is suppressed
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class ExtractConfig:
    """`nla extract`: residual-stream activations of a corpus at one or more layers."""

    model: str
    layers: list[int]
    corpus: str
    out: Path
    positions_per_doc: int = 5
    min_position: int = DEFAULT_MIN_POSITION
    max_tokens: int = 256
    max_docs: int | None = None
    seed: int = 0
    dtype: str = "auto"
    device: str = "cpu"
    batch_size: int = 16
    chunk_docs: int = 256

    def layer_dir(self, layer: int) -> Path:
        return Path(self.out) if len(self.layers) == 1 else Path(self.out) / f"layer_{layer}"


@dataclass
class SynthConfig:
    """`nla synth`: an offline corpus in other registers, written by the target itself."""

    out: Path  # a .jsonl file
    model: str = "smollm2-135m"
    registers: tuple[str, ...] = ("chat", "fiction", "news", "reviews", "instructions", "code")
    docs_per_register: int = 240
    max_new_tokens: int = 160
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 24
    seed: int = 0
    device: str = "cpu"
    dtype: str = "auto"
    code_package: str = "rich"
    code_lines: int = 30
    min_words: int = 20  # shorter replies are dropped: too short to sample positions from


@dataclass
class SFTConfig:
    """One config for both SFT recipes (`injection_scale` is read by the AV recipe only)."""

    data: str  # activations dataset with an explanation column
    out: str  # NLA folder: the recipe writes out/ar or out/av, and its run state under out/train_<role>
    val_data: str | None = None
    base: str | None = None  # AR/AV base model; default: the dataset's target model
    init_from: str | None = None  # an NLA folder or shipped name: start from its trained AR or AV, not a fresh one
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
    # AR prompt with {explanation} and optionally {quote} (nlakit's meta.AR_QUOTE_TEMPLATE); None = the reference's
    ar_template: str | None = None


@dataclass
class RLConfig:
    """`nla train rl`: GRPO for the AV with the live AR's reward; the AR learns the fresh explanations."""

    data: str  # activations (an explanation column is not needed)
    nla: str  # the SFT NLA folder (av/ and ar/)
    out: str  # new NLA folder: out/av, out/ar, out/train_rl
    val_data: str | None = None
    group_size: int = 4
    prompts_per_step: int = 4
    max_new_tokens: int = 96
    temperature: float = 1.0
    av_lr: float = 1e-5
    ar_lr: float = 5e-5
    clip_eps: float = 0.2
    kl_coef: float = 0.01
    kl_type: str = "k1"  # or "k3"
    # k1's gradient (kl_coef * grad log p) does not read the reference's log-probs, so under k1 the reference pass,
    # which only measures the KL, runs on every kl_every-th step (the KL is logged there); k3 needs it every step
    kl_every: int = 10
    reward: str = "mse"  # or "log_mse"
    length_penalty: float = 0.0  # reward -= length_penalty * response tokens
    paraphrase_aug: bool = False
    grad_clip: float = 1.0
    max_steps: int = 100
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    autocast: str = "auto"
    # rollouts decode on a copy of the merged weights in this dtype: auto is bf16 where the dtype probe finds bf16
    # GEMMs faster (GPUs, AVX-512 bf16 CPUs), else the weights' own; the update's log-probs stay in `autocast`
    rollout_dtype: str = "auto"
    save_every: int = 10
    eval_every: int = 25
    eval_rows: int = 64
    sample_every: int = 10
    log_every: int = 1
    # AR optimizer steps per batch of fresh explanations: >1 lets the AR keep up with the AV; 0 freezes the AR, so the
    # AV learns against a fixed critic (a short CPU run, where a drifting AR costs more than it gives)
    ar_updates: int = 1


def _at_least(cfg: Any, **bounds: float) -> None:
    """A one-line error for a field below its bound; YAML and key=value bypass the CLI's own range checks."""
    for name, low in bounds.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < low:
            raise NlakitError(f"{name} must be a number {low:g} or more (got {value!r})")


@dataclass(kw_only=True)
class ModelConfig:
    """Which NLA to load, and how: shared by every command that loads one (explain, demo, verbalize, reconstruct,
    serve, eval), so `--nla`, `--device`, `--dtype` and the released-NLA options mean the same everywhere."""

    nla: str | None = None  # an NLA folder or shipped name; None: DEFAULT_NLA, unless av/ar are given
    av: str | None = None  # a separate AV folder (the reference's releases); overrides nla's
    ar: str | None = None  # a separate AR folder; overrides nla's
    target: str | None = None  # local folder of the target model (released sidecars name a Hub id)
    layer: int | None = None  # K, for an AV sidecar that records none
    injection_scale: float | None = None  # overrides the AV sidecar's
    rawvar: float | None = None  # the FVE denominator when the AR sidecar records none
    data: str | None = None  # an activations dataset to compute rawvar from (when rawvar is not given)
    device_map: str | None = None  # accelerate placement for models too big for one device
    device: str = "cpu"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        _at_least(self, layer=0, injection_scale=0, rawvar=0)


@dataclass(kw_only=True)
class ExplainConfig(ModelConfig):
    """`nla explain` and `nla demo`: per-token explanations of one text."""

    positions: list[int] | None = None  # None: every token but 0 (the attention sink)
    max_new_tokens: int | None = None  # None: the AV's training cap
    temperature: float = 0.0  # 0 = greedy (deterministic)
    best_of: int = 1  # > 1: the AR picks the best of the greedy text and best_of - 1 samples (NLA.pick_best)
    sample_temperature: float = 1.0  # the samples' temperature when best_of > 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, max_new_tokens=1, temperature=0, best_of=1, sample_temperature=0)
        if self.positions is not None and not self.positions:
            raise NlakitError("positions is empty; give token positions such as [3, 4, 5] or leave it out")


@dataclass(kw_only=True)
class VerbalizeConfig(ModelConfig):
    """`nla verbalize`: explanations of the first `n` vectors of a dataset."""

    n: int = 3
    max_new_tokens: int | None = None  # None: the AV's training cap
    temperature: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, n=1, max_new_tokens=1, temperature=0)


@dataclass(kw_only=True)
class ServeConfig(ModelConfig):
    """`nla serve`: the local web viewer."""

    host: str = "127.0.0.1"  # the default keeps the viewer on this machine
    port: int = 8000
    max_waiting: int = 4  # requests that may wait behind the running one, per queue; the next gets a 429

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, port=1, max_waiting=0)
        if isinstance(self.max_waiting, float):  # a queue holds whole requests
            raise NlakitError(f"max_waiting must be a whole number 0 or more (got {self.max_waiting!r})")
        if self.port > 65535:
            raise NlakitError(f"port must be 1..65535 (got {self.port})")


@dataclass(kw_only=True)
class EvalConfig(ModelConfig):
    """`nla eval`: fidelity, baselines, probes and causal checks on held-out text."""

    out: str
    texts: str | None = None  # .txt (documents separated by blank lines) or .jsonl (a `text` field)
    corpus: str | None = None
    docs_from: str | None = None  # a dataset (e.g. split/test) or a .txt of ids: evaluate exactly those documents
    train_data: str | None = None  # the training activations: nearest-context baseline, oracle, overlap check
    compare_ar: str | None = None  # another AR (or NLA folder): it reads the same explanations, e.g. before/after
    compare_nla: str | None = None  # another NLA: it explains the same positions and reads its own text
    max_positions: int = 256
    positions_per_doc: int = 3
    min_position: int = DEFAULT_MIN_POSITION
    max_tokens: int = 256
    seed: int = 0
    max_new_tokens: int | None = None  # None: the AV's training cap, as explain uses (reports before v4 used 120)
    batch_size: int = 32
    best_of: int = 1  # > 1: score the AR's pick of the greedy text and best_of - 1 samples (NLA.pick_best)
    sample_temperature: float = 1.0  # the samples' temperature when best_of > 1
    steer_alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # fractions of |h| (the paper's rule)
    steer_cases: list[tuple] | None = None  # (prompt, wanted word, edit anchor); None: eval's eight + the rhyme
    steer_dev_cases: list[tuple] | None = None  # where the edit form and alpha are chosen; None: eval's eight

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, max_positions=1, positions_per_doc=1, min_position=1, max_tokens=2, max_new_tokens=1)
        _at_least(self, batch_size=1, best_of=1, sample_temperature=0)
        if not self.steer_alphas or not all(
            isinstance(a, (int, float)) and math.isfinite(a) for a in self.steer_alphas
        ):
            raise NlakitError(
                f"steer_alphas must be one or more finite numbers, e.g. 0.25,0.5,1 (got {self.steer_alphas!r})"
            )
        for name in ("steer_cases", "steer_dev_cases"):
            for case in getattr(self, name) or []:
                if (
                    not isinstance(case, (list, tuple))
                    or len(case) not in (2, 3)
                    or not all(isinstance(x, str) for x in case)
                ):
                    raise NlakitError(f"{name}: each case is [prompt, word] or [prompt, word, anchor] (got {case!r})")


def _base(typ: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed): `int | None` -> (int, True)."""
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        return (args[0] if len(args) == 1 else typ), len(args) < len(typing.get_args(typ))
    return typ, False


def _coerce(value: str, typ: Any) -> Any:
    """A `key=value` string as the field's type; lists and tuples are comma-separated (layers=10,15,20)."""
    base, optional = _base(typ)
    if optional and value.lower() in ("none", "null"):
        return None
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        parts = [_coerce(v.strip(), typing.get_args(base)[0]) for v in value.split(",") if v.strip()]
        return tuple(parts) if origin is tuple else parts
    if base is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise NlakitError(f"{value!r} is not a boolean; use true or false")
        return value.lower() in ("true", "1")
    if base in (int, float):
        try:
            return base(value)
        except ValueError:
            raise NlakitError(f"{value!r} is not {'an integer' if base is int else 'a number'}") from None
    return Path(value) if base is Path else value


def _check(key: str, value: Any, typ: Any) -> Any:
    """A YAML value of the field's type (ints pass as floats, strings as paths), else a one-line error."""
    base, optional = _base(typ)
    if value is None and optional:
        return None
    if base is Path and isinstance(value, str):
        return Path(value)
    if base in (int, float) and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return _coerce(value, base)
        except NlakitError as e:
            raise NlakitError(f"config key {key!r}: {e}") from None
    origin = typing.get_origin(base)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):  # each item of its own type
        items = [_check(f"{key}[{i}]", v, typing.get_args(base)[0]) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(base, True)
    if not ok:
        raise NlakitError(f"config key {key!r} must be {getattr(base, '__name__', base)}, not {value!r}")
    return float(value) if base is float else value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """Build `cls` from, in rising precedence: its defaults, a YAML file, `values` (typed, e.g. the flags given on a
    command line) and `key=value` overrides. Unknown keys are an error, not silently dropped."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise NlakitError(f"config {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise NlakitError(f"config {p} is not UTF-8 (byte {e.start}); save it as UTF-8") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise NlakitError(f"config {p} is not readable YAML: {getattr(e, 'problem', None) or e}{where}") from None
        if not isinstance(data, dict):
            raise NlakitError(f"config {p} must be a mapping of key: value lines")
    hints = get_type_hints(cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise NlakitError(f"unknown config key(s) {sorted(unknown)} in {path}; valid keys: {', '.join(hints)}")
    data.update(values or {})
    for item in overrides or []:
        if "=" not in item:
            raise NlakitError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        if key not in hints:
            raise NlakitError(f"unknown config key {key!r}; valid keys: {', '.join(hints)}")
        try:
            data[key] = _coerce(value, hints[key])
        except NlakitError as e:
            raise NlakitError(f"override {item!r}: {e}") from None
    unknown = set(data) - set(hints)
    if unknown:
        raise NlakitError(f"unknown config key(s) {sorted(unknown)}; valid keys: {', '.join(hints)}")
    data = {key: _check(key, value, hints[key]) for key, value in data.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
    ]
    if missing:
        raise NlakitError(
            f"config is missing {', '.join(missing)}; give them as options, in the YAML (--config) or as key=value"
        )
    return cls(**data)


def dump_config(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
