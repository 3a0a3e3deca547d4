"""Shipping an NLA: `nla export` halves the adapter bytes and loads back to the same reconstructions; `nla demo`."""

from __future__ import annotations

import pytest
import torch

from conftest import SHORT_AV_TEMPLATE, sft_config
from nlakit.errors import NlakitError


@pytest.fixture(scope="module")
def lora_nla(tiny_pairs, tmp_path_factory):
    from nlakit.train.sft_ar import train_ar
    from nlakit.train.sft_av import train_av

    out = tmp_path_factory.mktemp("lora_nla")
    kw = dict(lora=True, lora_r=4, lora_alpha=8, max_steps=3, eval_every=3, save_every=3, lr=1e-2)
    train_ar(sft_config(tiny_pairs, out, **kw))
    train_av(sft_config(tiny_pairs, out, av_template=SHORT_AV_TEMPLATE, **kw))
    return out


def test_export_bf16_adapters(lora_nla, tmp_path):
    from nlakit.nla import NLA, export

    sizes = export(lora_nla, tmp_path / "shipped")
    assert not any(k.startswith("train_") for k in sizes)  # run state stays behind
    for role in ("av", "ar"):
        full = (lora_nla / role / "adapter_model.safetensors").stat().st_size
        assert sizes[f"{role}/adapter_model.safetensors"] < 0.6 * full
    texts = ["The text ends with the token 'the'.", "a period at the end"]
    a = NLA.from_pretrained(lora_nla, dtype="float32").reconstruct(texts)
    b = NLA.from_pretrained(tmp_path / "shipped", dtype="float32").reconstruct(texts)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999
    with pytest.raises(NlakitError, match="other than the source"):
        export(lora_nla, lora_nla)


def test_demo_prints_explanations(nla_dir):
    from typer.testing import CliRunner

    from nlakit.cli import app

    res = CliRunner().invoke(app, ["demo", "The cat sat on the mat.", "--nla", str(nla_dir[0]), "--positions", "2,3"])
    assert res.exit_code == 0, res.output
    assert "explanation" in res.output and "fve" in res.output


def test_merged_export_refuses_a_quote_template_ar(lora_nla, tmp_path):
    """The reference's critic would read a {quote} AR without its quote: the reference layout is refused for it."""
    import shutil
    from dataclasses import replace

    from nlakit.meta import AR_QUOTE_TEMPLATE, read_model_meta, write_model_meta
    from nlakit.nla import export

    src = tmp_path / "quote_nla"
    shutil.copytree(lora_nla, src)
    meta = read_model_meta(src / "ar")
    write_model_meta(src / "ar", replace(meta, prompt_templates={**meta.prompt_templates, "ar": AR_QUOTE_TEMPLATE}))
    with pytest.raises(NlakitError, match="without --merge"):
        export(src, tmp_path / "merged", merge=True)
    assert not (tmp_path / "merged").exists()
