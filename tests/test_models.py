from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from conftest import perturb_lora
from nlakit.models import load_backbone, load_causal_lm, merge_lora


def _adapter(tmp_path, loader, **lora):
    """A saved LoRA adapter with seeded non-zero weights over `tiny` (a fresh one is a no-op: B is zero)."""
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **lora)
    model = perturb_lora(get_peft_model(loader("tiny", dtype="float32"), cfg), 0.05)
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("loader", [load_causal_lm, load_backbone])  # the AV's model and the AR's backbone
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rslora", [False, True])
def test_merge_lora_equals_peft_merge(tmp_path, loader, dtype, rslora):
    folder = _adapter(tmp_path, loader, use_rslora=rslora)
    ours = loader("tiny", dtype=dtype)
    base = {k: v.clone() for k, v in ours.state_dict().items()}
    assert merge_lora(ours, folder)
    peft = PeftModel.from_pretrained(loader("tiny", dtype=dtype), folder).merge_and_unload()
    theirs = peft.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    changed = [k for k, v in ours.state_dict().items() if not torch.equal(v, base[k])]
    assert len(changed) == 3 * len(ours.get_decoder().layers if hasattr(ours, "get_decoder") else ours.layers)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, theirs[k]), k


def test_merge_lora_leaves_what_it_does_not_cover_to_peft(tmp_path):
    folder = _adapter(tmp_path, load_causal_lm, use_dora=True)
    model = load_causal_lm("tiny", dtype="float32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not merge_lora(model, folder)
    # a per-module rank, and an adapter whose module names are not the model's, are refused as well
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": False, "rank_pattern": {"q_proj": 2}}))
    assert not merge_lora(model, folder)
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": False}))
    assert not merge_lora(load_backbone("tiny", dtype="float32", num_layers=1), folder)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
