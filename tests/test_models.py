from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from conftest import perturb_lora
from nlakit.models import load_backbone, load_causal_lm, merge_lora, with_adapters


def _adapter(folder, loader, stored=torch.float32, **lora):
    """A saved LoRA adapter with seeded non-zero weights over `tiny` (a fresh one is a no-op: B is zero), its tensors
    stored in `stored` (`nla export` ships bf16)."""
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **lora)
    perturb_lora(get_peft_model(loader("tiny", dtype="float32"), cfg), 0.05).save_pretrained(folder)
    path = folder / "adapter_model.safetensors"
    save_file({k: v.to(stored) for k, v in load_file(path).items()}, path)
    return folder


@pytest.mark.parametrize("loader", [load_causal_lm, load_backbone])  # the AV's model and the AR's backbone
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rslora", [False, True])
def test_merge_lora_equals_peft_merge(tmp_path, loader, dtype, stored, rslora):
    folder = _adapter(tmp_path, loader, stored, use_rslora=rslora)
    ours = loader("tiny", dtype=dtype)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    assert merge_lora(ours, folder)
    theirs = PeftModel.from_pretrained(loader("tiny", dtype=dtype), folder).merge_and_unload()
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    layers = ours.model.layers if hasattr(ours, "model") else ours.layers
    changed = {k for k, v in ours.state_dict().items() if not torch.equal(v, base[k])}
    assert len(changed) == 3 * len(layers)
    assert {k.split(".")[-2] for k in changed} == {"q_proj", "v_proj", "down_proj"}
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    assert not any(p.requires_grad for p in ours.parameters())  # frozen, as PEFT leaves a merged model


def test_with_adapters_keeps_them_for_training(tmp_path):
    model = with_adapters(load_causal_lm("tiny", dtype="float32"), _adapter(tmp_path, load_causal_lm), trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def _edited(folder, **changes):
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
    return folder


@pytest.mark.parametrize(
    "case",
    ["dora", "rank_pattern", "pissa_init", "alora", "other_model", "extra_tensor", "wrong_rank"],
)
def test_merge_lora_leaves_what_it_does_not_cover_to_peft(tmp_path, case):
    """Each refusal comes from one thing alone: the other cases are plain adapters that merge_lora takes."""
    if case == "dora":
        folder = _adapter(tmp_path, load_causal_lm, use_dora=True)
    else:
        folder = _adapter(tmp_path, load_causal_lm)
        assert merge_lora(load_causal_lm("tiny", dtype="float32"), folder)  # the plain adapter merges
    if case == "rank_pattern":
        _edited(folder, rank_pattern={"q_proj": 2})
    elif case == "pissa_init":  # PEFT would re-derive the base weights on load
        _edited(folder, init_lora_weights="pissa")
    elif case == "alora":
        _edited(folder, alora_invocation_tokens=[1, 2])
    elif case == "extra_tensor":  # a bias or an embedding row saved beside the adapters
        path = folder / "adapter_model.safetensors"
        save_file({**load_file(path), "base_model.model.lm_head.bias": torch.zeros(3)}, path)
    elif case == "wrong_rank":
        _edited(folder, r=2)
    model = load_backbone("tiny", dtype="float32") if case == "other_model" else load_causal_lm("tiny", dtype="float32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not merge_lora(model, folder)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
