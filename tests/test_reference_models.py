"""Released NLAs (reference layout) on golden fixtures: Qwen2, Llama, Gemma-3 text and Gemma-3 multimodal.

nlakit's AV input embeddings, AV logits and AR reconstructions are compared with an independent re-implementation of
the reference's inference path (`reference_fixtures.ref_*`), and each gap of issue 17 is exercised on the fixtures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from nlakit.errors import NlakitError
from reference_fixtures import ARCH_NAMES, LAYER, build, ref_ar_reconstruct, ref_av_embeds, ref_av_logits

EXPLANATION = "The text is about the Eiffel Tower in Paris"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    cache = {}

    def get(name: str, scrubbed: bool = True):
        key = (name, scrubbed)
        if key not in cache:
            cache[key] = build(name, root / f"{name}_{'scrubbed' if scrubbed else 'raw'}", scrubbed=scrubbed)
        return cache[key]

    return get


def _vector(seed: int = 0) -> torch.Tensor:
    return torch.randn(32, generator=torch.Generator().manual_seed(seed)) * 7


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_nlakit_matches_reference_forward(fixtures, arch):
    """Item 1 (Gemma-3 text and multimodal, and the others): the same prompt ids, input embeddings (raw lookup, x
    sqrt(d) for Gemma, marker row = v * scale / |v|), AV logits and AR reconstruction as the reference path."""
    from nlakit.nla import NLA

    fx = fixtures(arch)
    nla = NLA.from_pretrained(av=fx.av, ar=fx.ar, target=fx.target, dtype="float32")
    v = _vector()
    ref_ids, ref_embeds = ref_av_embeds(fx.av, v)
    assert nla.av.prompt_ids == ref_ids
    ids = torch.tensor([nla.av.prompt_ids])
    with torch.no_grad():
        ours = nla.av.embed(ids, torch.ones_like(ids), v[None])[0].float()
    scale = float(ref_embeds.abs().max())
    torch.testing.assert_close(ours, ref_embeds, atol=1e-5 * scale, rtol=1e-5)
    with torch.no_grad():
        logits = nla.av.model(inputs_embeds=ours[None], use_cache=False).logits[0].float()
    torch.testing.assert_close(logits, ref_av_logits(fx.av, ref_embeds), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nla.ar.reconstruct([EXPLANATION])[0], ref_ar_reconstruct(fx.ar, EXPLANATION))
    assert nla.layer == LAYER and nla.target == str(fx.target)


@pytest.mark.parametrize("arch", ["gemma3_text", "gemma3"])
def test_gemma_batched_fast_generation_matches_hf(fixtures, arch):
    """Item 2: the shared prefix is prefilled at batch 1 and spread over the batch, sliding-window layers included
    (window 8 < prompt length), so batched greedy decoding equals Hugging Face `generate` row for row."""
    from nlakit.av import AV
    from nlakit.generation import SamplingConfig, fast_generate, hf_generate

    fx = fixtures(arch)
    av = AV.from_pretrained(fx.av, dtype="float32")
    vectors = torch.stack([_vector(i) for i in range(3)])
    ids = torch.tensor([av.prompt_ids] * 3)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        embeds = av.embed(ids, mask, vectors)
    cfg = SamplingConfig(max_new_tokens=10, min_new_tokens=10)
    marker = av.prompt_ids.index(av.meta.tokens.injection_token_id)
    fast = fast_generate(av.model, embeds, mask, cfg, av.eos_ids, av.tok.pad_token_id, shared_prefix=marker)
    slow = hf_generate(av.model, embeds, mask, cfg, av.eos_ids, av.tok.pad_token_id)
    assert fast.shape == (3, 10)
    assert torch.equal(fast, slow[:, -10:])
    # (that the vectors reach the logits is AV.check_injection's preflight, run by from_pretrained)


def test_hub_id_target_error_and_target_override(fixtures):
    """Item 3: a released sidecar names a Hub id; without --target the error says how to map it to a folder."""
    from nlakit.nla import NLA

    fx = fixtures("qwen2")
    nla = NLA.from_pretrained(av=fx.av, ar=fx.ar, dtype="float32")
    assert nla.target == "Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(NlakitError, match=r"hf download Qwen/Qwen2.5-7B-Instruct --local-dir .*--target"):
        nla.activations("The Eiffel Tower is in Paris")
    nla = NLA.from_pretrained(av=fx.av, ar=fx.ar, target=fx.target, dtype="float32")
    rows = nla.explain("The Eiffel Tower is in Paris", [2, 3], max_new_tokens=6)
    assert [r.position for r in rows] == [2, 3]
    assert all(r.fve_nrm is None for r in rows)  # item 7: released AR sidecars record no rawvar


def test_cli_explain_with_separate_folders(fixtures, tmp_path):
    """Item 3 and 7 through the CLI: --av --ar --target, and --data giving the FVE denominator."""
    import numpy as np
    from typer.testing import CliRunner

    from nlakit.cli import app
    from nlakit.dataset import make_table, write_parquet

    fx = fixtures("gemma3_text")
    data = tmp_path / "acts.parquet"
    write_parquet(data, make_table(np.random.default_rng(0).normal(size=(20, 32)), {"doc_id": ["d"] * 20}))
    out = tmp_path / "x.json"
    args = ["explain", "The Eiffel Tower is in Paris", "--av", str(fx.av), "--ar", str(fx.ar)]
    args += ["--positions", "2", "--max-new-tokens", "4", "--dtype", "float32", "--json", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and "--target" in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--target", str(fx.target), "--data", str(data)])
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())["tokens"][0]
    assert row["position"] == 2 and row["fve_nrm"] is not None


def test_missing_chat_template_is_an_error(fixtures, tmp_path):
    """Item 4: a tokenizer without a chat template is refused, not given a bare-text prompt."""
    from nlakit.av import AV

    fx = fixtures("llama")
    av_dir = tmp_path / "av"
    shutil.copytree(fx.av, av_dir)
    (av_dir / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((av_dir / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (av_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(NlakitError, match="no chat template"):
        AV.from_pretrained(av_dir, dtype="float32")


def test_sharded_device_map_loading(fixtures, tmp_path):
    """Item 5: a sharded checkpoint placed by accelerate (device_map) gives the same outputs as a plain load."""
    from transformers import AutoModelForCausalLM

    from nlakit.models import load_backbone, load_causal_lm

    fx = fixtures("gemma3")
    sharded = tmp_path / "sharded"
    model = AutoModelForCausalLM.from_pretrained(fx.target, dtype=torch.float32)
    model.save_pretrained(sharded, max_shard_size="2MB")
    shutil.copy(fx.target / "tokenizer.json", sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    ids = torch.tensor([[2, 29, 30, 31, 40]])
    plain = load_causal_lm(fx.target, dtype="float32")
    placed = load_causal_lm(sharded, dtype="float32", device_map="auto")
    with torch.no_grad():
        torch.testing.assert_close(placed(input_ids=ids).logits, plain(input_ids=ids).logits)
    trunc = load_backbone(sharded, num_layers=LAYER + 1, dtype="float32", device_map={"": "cpu"})
    assert trunc.config.num_hidden_layers == LAYER + 1 and len(trunc.config.layer_types) == LAYER + 1


def test_dtype_auto_probe(tmp_path):
    """Item 5 (dtype): auto is bf16 on CUDA; on a CPU the cached GEMM probe decides, and says so."""
    from nlakit import models

    assert models.resolve_dtype("auto", "cuda") == torch.bfloat16
    probe = models.dtype_probe()
    assert probe["chosen"] in ("float32", "bfloat16")
    assert {"float32_512", "bfloat16_512"} <= set(probe["seconds"])
    assert models.resolve_dtype("auto") == models.DTYPES[probe["chosen"]]
    stored = json.loads((models.home() / "dtype_probe.json").read_text())
    assert probe in stored.values()
    models._PROBE = None  # a new process reads the disk cache instead of timing again
    assert models.dtype_probe() == probe
    assert probe["chosen"] in models.auto_dtype_note()


def test_max_new_tokens_from_sidecar(fixtures):
    """Item 6: no cap recorded -> the reference client's 200 (above its 150 training cap); a recorded cap wins."""
    from nlakit.av import AV

    fx = fixtures("qwen2")
    av = AV.from_pretrained(fx.av, dtype="float32")
    assert av.meta.max_new_tokens == 200
    av.meta.training = {**(av.meta.training or {}), "max_new_tokens": 3}
    v = torch.stack([_vector(1), _vector(2)])
    assert av.verbalize(v, raw=True) == av.verbalize(v, raw=True, max_new_tokens=3)


def test_injection_scale_override_and_unscrubbed_actor(fixtures):
    """Item 10: --injection-scale replaces the sidecar's; an unscrubbed `actor` sidecar (no layer) asks for
    --layer when no AR supplies it, and takes it from the AR when one does."""
    from nlakit.nla import NLA

    fx = fixtures("llama", scrubbed=False)
    raw = yaml.safe_load((fx.av / "nla_meta.yaml").read_text())
    assert raw["role"] == "actor" and "extraction_layer_index" not in raw
    nla = NLA.from_pretrained(av=fx.av, target=fx.target, dtype="float32", injection_scale=12.5)
    ids = torch.tensor([nla.av.prompt_ids])
    pos = nla.av.prompt_ids.index(nla.av.meta.tokens.injection_token_id)
    with torch.no_grad():
        row = nla.av.embed(ids, torch.ones_like(ids), _vector()[None])[0, pos]
    assert float(row.norm()) == pytest.approx(12.5, rel=1e-5)
    assert nla.layer == -1
    with pytest.raises(NlakitError, match="--layer"):
        nla.activations("The Eiffel Tower")
    nla = NLA.from_pretrained(av=fx.av, target=fx.target, dtype="float32", layer=LAYER)
    assert nla.activations("The Eiffel Tower")[1].shape[1] == 32
    paired = NLA.from_pretrained(av=fx.av, ar=fx.ar, target=fx.target, dtype="float32")
    assert paired.layer == LAYER and paired.av.meta.injection_scale == 30.0


def test_export_merge_round_trip(tmp_path):
    """Item 9: a LoRA NLA exported with --merge is in the reference layout (loadable by the reference-style path)
    and loads back into nlakit with the same AV logits and AR reconstructions (nlakit -> reference -> nlakit)."""
    from peft import LoraConfig, get_peft_model
    from typer.testing import CliRunner

    from nlakit.ar import AR
    from nlakit.av import AV
    from nlakit.cli import app
    from nlakit.meta import ModelMeta
    from nlakit.nla import NLA

    av_meta = ModelMeta("av", 64, LAYER, 20.0, 8.0, base_checkpoint="tiny", target="tiny")
    av = AV.from_base("tiny", av_meta, dtype="float32")
    meta = ModelMeta("ar", 64, LAYER, None, 8.0, tokens=av.meta.tokens, base_checkpoint="tiny", target="tiny")
    ar = AR.from_base("tiny", meta, dtype="float32")
    g = torch.Generator().manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    av.model, ar.backbone = get_peft_model(av.model, lora), get_peft_model(ar.backbone, lora)
    with torch.no_grad():
        for model in (av.model, ar.backbone):
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        ar.value_head.weight.add_(torch.randn(64, 64, generator=g) * 0.1)
    src, dest = tmp_path / "nla", tmp_path / "released"
    NLA(av, ar).save_pretrained(src)
    assert (src / "av" / "adapter_config.json").is_file()
    res = CliRunner().invoke(app, ["export", str(src), str(dest), "--merge", "--storage-dtype", "float32"])
    assert res.exit_code == 0, res.output
    assert not (dest / "av" / "adapter_config.json").exists() and (dest / "ar" / "value_head.safetensors").is_file()
    ar_cfg = json.loads((dest / "ar" / "config.json").read_text())
    assert ar_cfg["num_hidden_layers"] == LAYER + 1 and ar_cfg["architectures"] == ["LlamaForCausalLM"]

    before = NLA.from_pretrained(src, dtype="float32")
    after = NLA.from_pretrained(dest, dtype="float32")
    v = _vector().repeat(2)  # d=64
    ids = torch.tensor([before.av.prompt_ids])
    with torch.no_grad():
        e0 = before.av.embed(ids, torch.ones_like(ids), v[None])
        e1 = after.av.embed(ids, torch.ones_like(ids), v[None])
        torch.testing.assert_close(after.av.model(inputs_embeds=e1).logits, before.av.model(inputs_embeds=e0).logits)
    torch.testing.assert_close(after.ar.reconstruct([EXPLANATION]), before.ar.reconstruct([EXPLANATION]))
    # and the reference's own loaders read what nlakit wrote
    torch.testing.assert_close(ref_ar_reconstruct(dest / "ar", EXPLANATION), before.ar.reconstruct([EXPLANATION])[0])
    _, ref_embeds = ref_av_embeds(dest / "av", v)
    torch.testing.assert_close(e0[0], ref_embeds)


def test_readme_released_nla_section(fixtures, tmp_path, monkeypatch):
    """The README's "Use a released NLA" commands run as written, on the Qwen fixture laid out under those names."""
    import shlex

    from typer.testing import CliRunner

    from nlakit.cli import app

    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Use a released NLA", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    fx = fixtures("qwen2")
    monkeypatch.chdir(tmp_path)
    Path("nla-qwen2.5-7b-L20").mkdir()
    shutil.copytree(fx.av, "nla-qwen2.5-7b-L20/av")
    shutil.copytree(fx.ar, "nla-qwen2.5-7b-L20/ar")
    shutil.copytree(fx.target, "models/Qwen2.5-7B-Instruct")
    words = "The Eiffel Tower is in Paris and the river is in the city of the capital of France".split()
    docs = [" ".join(words[(i + j) % len(words)] for j in range(60)) + "." for i in range(2)]
    Path("texts.txt").write_text("\n\n".join(docs) + "\n")  # longer than eval's earliest sampled position
    ran = 0
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("nla "):
            continue
        args = shlex.split(line)[1:]
        if args[0] != "export":
            args += ["--dtype", "float32"]  # the probe may pick bf16; the fixture checks run in fp32
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, (line, res.output, res.exception)
        ran += 1
    assert ran >= 3
