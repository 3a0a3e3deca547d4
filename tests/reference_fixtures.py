"""Golden fixtures: tiny random checkpoints written the way the reference's writers write them (no binaries are
committed; everything is generated here from code).

Per architecture (Qwen2, Llama, Gemma-3 text, Gemma-3 multimodal) `build(arch, root)` writes:
- `target/`: the base model (what the sidecars call `base_checkpoint`, a Hub id, so `--target` must map it);
- `av/`: the AV, a full-weight model of the same architecture, bf16 safetensors, tokenizer, `nla_meta.yaml`;
- `ar/`: the AR: K+1 layers saved from a causal LM whose final norm and lm_head are Identity, bf16
  `value_head.safetensors`, the tokenizer saved with right padding, `nla_meta.yaml`.
Sidecars are dumped with `yaml.safe_dump(..., sort_keys=False)` (no `allow_unicode`, so the marker is escaped), with
scrubbed `av`/`ar` roles (release script: top-level `extraction_layer_index`, `_name_or_path` stripped from config.json)
or the trainer's `actor`/`critic` roles (the actor records no layer).

No installed package ships the Qwen, Llama or Gemma tokenizer files, so each tokenizer is a word-level one built
here that holds the real marker, its neighbours, the AR suffix ids and the chat specials at their real ids
(Qwen: marker 149705, `>` 29, `</` 522; Gemma: 246566, 236813, 954; Llama: marker 105565, neighbour ids assumed
29 and 524), with a vocabulary as large as the real one so the embedding covers the sparse ids.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

AV_TEMPLATE = (
    "You are a meticulous AI researcher conducting an important investigation into activation vectors from a "
    "language model. Your overall task is to describe the semantic content of that activation vector.\n\n"
    "We will pass the vector enclosed in <concept> tags into your context. You must then produce an explanation "
    "for the vector, enclosed within <explanation> tags. The explanation consists of 2-3 text snippets describing "
    "that vector.\n\nHere is the vector:\n\n<concept>{injection_char}</concept>\n\nPlease provide an explanation."
)
AR_TEMPLATE = "Summary of the following text: <text>{explanation}</text> <summary>"
LAYER = 2  # K: the AR keeps blocks 0..2
N_LAYERS = 4
D = 32

QWEN_CHAT = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA_CHAT = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
GEMMA_CHAT = (
    "{{ bos_token }}{%- for message in messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{%- endif %}"
)

WORDS = (
    "You are a meticulous AI researcher conducting an important investigation into activation vectors from "
    "language model Your overall task is to describe the semantic content of that vector We will pass enclosed in "
    "concept tags into your context must then produce explanation for within The consists 2 3 text snippets "
    "describing Here Please provide Summary following summary Qwen created by Alibaba Cloud helpful assistant "
    "system user model The Eiffel Tower Paris France city capital river a an the of in on and or is was it this "
    "token next word sentence about likely continue continuation noun verb name place"
).split()


@dataclass(frozen=True)
class Arch:
    name: str
    hub_id: str
    vocab_size: int
    marker: str
    marker_id: int
    ids: dict[str, int]  # pieces at their real ids
    specials: dict[str, int]
    bos: str | None
    eos: str
    pad: str
    gen_eos: tuple[str, ...]
    chat: str
    injection_scale: float
    model_type: str


ARCHS = {
    "qwen2": Arch(
        "qwen2",
        "Qwen/Qwen2.5-7B-Instruct",
        152064,
        "㈎",
        149705,
        {">": 29, "</": 522, "text": 1318, " <": 366, "summary": 1708},
        {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
        None,
        "<|im_end|>",
        "<|endoftext|>",
        ("<|im_end|>", "<|endoftext|>"),
        QWEN_CHAT,
        150.0,
        "qwen2",
    ),
    "llama": Arch(
        "llama",
        "meta-llama/Llama-3.3-70B-Instruct",
        128256,
        "㎡",
        105565,
        {">": 29, "</": 524, "text": 1342, " <": 366, "summary": 1743},
        {
            "<|begin_of_text|>": 128000,
            "<|end_of_text|>": 128001,
            "<|finetune_right_pad_id|>": 128004,
            "<|start_header_id|>": 128006,
            "<|end_header_id|>": 128007,
            "<|eot_id|>": 128009,
        },
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        ("<|end_of_text|>", "<|eot_id|>"),
        LLAMA_CHAT,
        30.0,
        "llama",
    ),
    "gemma3_text": Arch(
        "gemma3_text",
        "google/gemma-3-12b-it",
        262208,
        "㈜",
        246566,
        {">": 236813, "</": 954, "text": 1005, " <": 655, "summary": 6011},
        {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 105, "<end_of_turn>": 106},
        "<bos>",
        "<eos>",
        "<pad>",
        ("<eos>", "<end_of_turn>"),
        GEMMA_CHAT,
        80000.0,
        "gemma3_text",
    ),
}
ARCHS["gemma3"] = Arch(**{**ARCHS["gemma3_text"].__dict__, "name": "gemma3", "model_type": "gemma3"})
ARCH_NAMES = ("qwen2", "llama", "gemma3_text", "gemma3")


def build_tokenizer(arch: Arch):
    """A word-level fast tokenizer: pieces split by a regex (a leading space stays with its word), the arch's real ids
    for the marker, its neighbours, the AR suffix and the chat specials; the rest of the vocabulary is filler."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = dict(arch.ids)
    vocab[arch.marker] = arch.marker_id
    unk = "<unk>"
    used = set(vocab.values()) | set(arch.specials.values())
    free = (i for i in range(4, arch.vocab_size) if i not in used)
    pieces = [unk, "\n", "\n\n", " ", "  ", "<", "concept", "explanation", " <", "/"]
    pieces += [chr(c) for c in range(33, 127)]
    pieces += [w for w in WORDS] + [" " + w for w in WORDS] + [" " + chr(c) for c in range(33, 127)]
    for p in pieces:
        if p not in vocab and p not in arch.specials:
            vocab[p] = next(free)
    if unk in arch.specials:
        vocab[unk] = arch.specials[unk]
    for s, i in arch.specials.items():
        vocab[s] = i
    if arch.name == "qwen2":
        # transformers always loads a qwen2 folder with Qwen2Tokenizer (byte-level BPE from vocab + merges), so the
        # Qwen fixture is a byte-level BPE whose merges build exactly these pieces, ids unchanged
        return _byte_level_qwen(arch, vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"</| <|<|>|\s?[A-Za-z]+|\s?[0-9]|\n+| +|\s|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if arch.bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{arch.bos} $A", pair=f"{arch.bos} $A $B", special_tokens=[(arch.bos, arch.specials[arch.bos])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        eos_token=arch.eos,
        pad_token=arch.pad,
        bos_token=arch.bos,
        additional_special_tokens=[s for s in arch.specials if s not in (arch.eos, arch.pad, arch.bos, unk)],
    )
    fast.chat_template = arch.chat
    return fast


QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level_qwen(arch: Arch, pieces: dict[str, int]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    used = set(pieces.values()) | set(arch.specials.values())
    free = (i for i in range(arch.vocab_size) if i not in used)
    vocab: dict[str, int] = {}
    for b in range(256):  # every byte, so any text encodes
        vocab[b2u[b]] = next(free)
    merges: list[tuple[str, str]] = []
    # merges are applied by rank: the marker, its neighbours and the AR suffix pieces come first, so no other
    # word's merges can pre-empt theirs (other words may then split into smaller pieces, which is harmless)
    first = {*arch.ids, arch.marker}
    for piece, pid in sorted(pieces.items(), key=lambda kv: (kv[0] not in first, kv[1])):
        if piece == "<unk>":
            continue
        chars = [b2u[b] for b in piece.encode()]
        prefix = chars[0]
        for i, c in enumerate(chars[1:], start=1):
            merged = prefix + c
            if (prefix, c) not in merges:
                merges.append((prefix, c))
            if merged not in vocab:
                vocab[merged] = pid if i == len(chars) - 1 else next(free)
            prefix = merged
        if len(chars) == 1:
            vocab.pop(chars[0], None)
            vocab[chars[0]] = pid
    ids = {}
    for k, v in vocab.items():  # one id per token (a single-byte piece took its real id above)
        if v not in ids.values():
            ids[k] = v
    tok = Tokenizer(models.BPE(ids, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=arch.eos,
        pad_token=arch.pad,
        additional_special_tokens=[s for s in arch.specials if s not in (arch.eos, arch.pad)],
    )
    fast.chat_template = arch.chat
    return fast


def text_config_kwargs(arch: Arch, layers: int = N_LAYERS) -> dict:
    tok = build_tokenizer(arch)
    kw = dict(
        vocab_size=arch.vocab_size,
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.convert_tokens_to_ids(t) for t in arch.gen_eos],
        pad_token_id=tok.pad_token_id,
    )
    if arch.name.startswith("gemma3"):
        # a window shorter than the AV prompt, with one global layer, so generation crosses sliding-window caches
        pattern = ["sliding_attention", "full_attention"] * N_LAYERS
        kw.update(sliding_window=8, layer_types=pattern[:layers])
    else:
        kw.update(tie_word_embeddings=arch.name == "qwen2")
    return kw


def make_model(arch: Arch, seed: int, layers: int = N_LAYERS):
    from transformers import (
        Gemma3Config,
        Gemma3ForCausalLM,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    kw = text_config_kwargs(arch, layers)
    if arch.name == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kw))
    elif arch.name == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kw))
    elif arch.name == "gemma3_text":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**kw))
    else:
        vision = dict(
            hidden_size=16,
            image_size=16,
            intermediate_size=16,
            num_attention_heads=1,
            num_hidden_layers=1,
            patch_size=8,
        )
        model = Gemma3ForConditionalGeneration(
            Gemma3Config(text_config=kw, vision_config=vision, mm_tokens_per_image=4)
        )
    with torch.no_grad():  # norms away from their init (ones / zeros) so removing one is visible
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _text_lm(model):
    """The text stack of a causal LM or of a Gemma-3 multimodal wrapper."""
    return model.model.language_model if hasattr(model.model, "language_model") else model.model


def _scrub_config(folder: Path) -> None:
    """As the release script: drop `_name_or_path` from config.json, also inside `text_config`."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("_name_or_path", None)
    if isinstance(cfg.get("text_config"), dict):
        cfg["text_config"].pop("_name_or_path", None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def tokens_section(tok, arch: Arch) -> dict:
    return {
        "injection_char": arch.marker,
        "injection_token_id": arch.marker_id,
        "injection_left_neighbor_id": arch.ids[">"],
        "injection_right_neighbor_id": arch.ids["</"],
        "critic_suffix_ids": tok.encode("</text> <summary>", add_special_tokens=False)[1:],
    }


def model_sidecar(arch: Arch, tok, role: str, scrubbed: bool) -> dict:
    """`write_model_sidecar` (schema 2), then the release scrub when `scrubbed`."""
    critic = role == "critic"
    meta = {
        "kind": "nla_model",
        "schema_version": 2,
        "role": role,
        "stage": "rl",
        "base_checkpoint": "/mnt/ckpt/base" if not scrubbed else arch.hub_id,
        "d_model": D,
        "extraction": {"injection_scale": None if critic else arch.injection_scale, "mse_scale": math.sqrt(D)},
        "tokens": tokens_section(tok, arch),
        "prompt_templates": {"actor": AV_TEMPLATE, "critic": AR_TEMPLATE},
        "trained_on": "gs://bucket/rl.parquet",
        "parent_checkpoints": ["/mnt/ckpt/sft/iter_0000100"],
        "created_at": "2025-01-01T00:00:00+00:00",
        "created_by": "nla",
        "training": {"rollout_id": 99, "lr": 1e-05, "loss_type": "policy_loss", "global_batch_size": 64},
    }
    if critic:
        meta["critic"] = {"extraction_layer_index": LAYER}
    if scrubbed:
        meta["role"] = {"actor": "av", "critic": "ar"}[role]
        meta["prompt_templates"] = {"av": AV_TEMPLATE, "ar": AR_TEMPLATE}
        meta["base_checkpoint"] = arch.hub_id
        meta["parent_checkpoints"] = [arch.hub_id]
        meta["trained_on"] = "Ultra-FineWeb and WildChat-1M activations"
        meta["training"].pop("rollout_id")
        meta["extraction_layer_index"] = LAYER
    return meta


def dump_sidecar(folder: Path, meta: dict) -> None:
    (folder / "nla_meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


@dataclass
class Fixture:
    arch: Arch
    root: Path
    target: Path
    av: Path
    ar: Path
    scrubbed: bool


def build(name: str, root: Path, scrubbed: bool = True) -> Fixture:
    from safetensors.torch import save_file

    arch = ARCHS[name]
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(arch)
    target, av, ar = root / "target", root / "av", root / "ar"

    base = make_model(arch, seed=0)
    base.to(torch.bfloat16).save_pretrained(target)
    tok.save_pretrained(target)

    make_model(arch, seed=1).to(torch.bfloat16).save_pretrained(av)  # the AV: a fine-tune, other weights
    tok.save_pretrained(av)
    _scrub_config(av) if scrubbed else None
    dump_sidecar(av, model_sidecar(arch, tok, "actor", scrubbed))

    # prepare_critic_checkpoint: the base with K+1 blocks, final norm and lm_head Identity, then trained weights
    critic = make_model(arch, seed=2, layers=LAYER + 1)
    _text_lm(critic).norm = torch.nn.Identity()
    critic.lm_head = torch.nn.Identity()
    critic.to(torch.bfloat16).save_pretrained(ar)
    tok.padding_side = "right"
    tok.save_pretrained(ar)
    g = torch.Generator().manual_seed(3)
    head = (torch.eye(D) + 0.3 * torch.randn(D, D, generator=g)).to(torch.bfloat16)
    save_file({"weight": head.contiguous()}, ar / "value_head.safetensors")
    _scrub_config(ar) if scrubbed else None
    dump_sidecar(ar, model_sidecar(arch, tok, "critic", scrubbed))
    return Fixture(arch, root, target, av, ar, scrubbed)


# ---- the reference's inference path, re-implemented independently of nlakit ----------------------------------------
def ref_av_prompt_ids(tok, meta: dict) -> list[int]:
    content = (meta["prompt_templates"].get("av") or meta["prompt_templates"]["actor"]).format(
        injection_char=meta["tokens"]["injection_char"]
    )
    ids = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


def ref_av_embeds(folder: Path, vector: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """NLAClient._build_embeds: raw embedding lookup from safetensors, x sqrt(d) for Gemma, marker row overwritten
    with v * scale / |v| (fp32 norm)."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    meta = yaml.safe_load((folder / "nla_meta.yaml").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    ids = ref_av_prompt_ids(tok, meta)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        key = next(k for k in f.keys() if k.endswith("embed_tokens.weight"))
        table = f.get_tensor(key).float()
    cfg = json.loads((folder / "config.json").read_text())
    text_cfg = cfg.get("text_config", cfg)
    scale = math.sqrt(text_cfg["hidden_size"]) if text_cfg["model_type"] in ("gemma3", "gemma3_text") else 1.0
    embeds = table[torch.tensor(ids)] * scale
    v = vector.float()
    s = meta["extraction"]["injection_scale"]
    t = meta["tokens"]
    pos = [
        p
        for p in range(1, len(ids) - 1)
        if ids[p] == t["injection_token_id"]
        and ids[p - 1] == t["injection_left_neighbor_id"]
        and ids[p + 1] == t["injection_right_neighbor_id"]
    ]
    assert len(pos) == 1
    embeds[pos[0]] = v / (v.norm() / s)
    return ids, embeds


def ref_av_logits(folder: Path, embeds: torch.Tensor) -> torch.Tensor:
    """Next-token logits of the whole AV checkpoint (multimodal wrapper included) from the given embeddings."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cfg = json.loads((folder / "config.json").read_text())
    cls = AutoModelForImageTextToText if "text_config" in cfg else AutoModelForCausalLM
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(inputs_embeds=embeds[None], use_cache=False).logits[0].float()


def ref_ar_reconstruct(folder: Path, explanation: str) -> torch.Tensor:
    """NLACritic.reconstruct: the saved causal LM (already K+1 layers) with lm_head and final norm Identity, the
    value head loaded from its own file, read at the last token of the BOS-prefixed AR prompt."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    meta = yaml.safe_load((folder / "nla_meta.yaml").read_text())
    tok = AutoTokenizer.from_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cls = AutoModelForImageTextToText if "text_config" in cfg else AutoModelForCausalLM
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    model.lm_head = torch.nn.Identity()
    _text_lm(model).norm = torch.nn.Identity()
    w = load_file(folder / "value_head.safetensors")["weight"].float()
    template = meta["prompt_templates"].get("ar") or meta["prompt_templates"]["critic"]
    ids = tok(template.format(explanation=explanation), return_tensors="pt", add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        h = model.model(ids, use_cache=False).last_hidden_state[0, -1]
    return (w @ h.float()).float()
