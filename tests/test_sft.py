"""End-to-end on `tiny`: extract -> synthetic explanations -> AR/AV SFT -> save -> load -> resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import sft_config
from nlakit.av import AV, extract_explanation
from nlakit.config import SFTConfig, load_config
from nlakit.dataset import load_pairs
from nlakit.errors import NlakitError
from nlakit.maths import meannorm_baseline
from nlakit.nla import NLA
from nlakit.train.sft_ar import train_ar


def test_ar_sft_beats_predict_the_mean(nla_dir, tiny_pairs):
    out, result, _ = nla_dir
    train = load_pairs(str(tiny_pairs["train"]), "explanation")
    baseline = meannorm_baseline(train.vectors)
    assert result["val_mse_nrm"] < 0.5 * baseline, (result, baseline)  # measured 0.29x
    rows = [json.loads(ln) for ln in (out / "train_ar" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (out / "train_ar" / "curves.png").stat().st_size > 1000


def test_av_sft_learns_and_reads_the_vector(nla_dir, tiny_pairs):
    out, _, result = nla_dir
    rows = [json.loads(ln) for ln in (out / "train_av" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert result["val_gap"] > 0.05, result  # real vectors explain the text better than shuffled (measured 0.15)
    # the AR trained first scores the AV's own explanations and the teacher's on the same rows
    assert {"val_fve_nrm", "val_teacher_fve_nrm", "val_av_over_teacher"} <= result.keys()
    assert result["val_av_over_teacher"] == pytest.approx(result["val_fve_nrm"] / result["val_teacher_fve_nrm"])
    # a fresh AV's generation cap is the longest response it learned to write (not the reference client's 200)
    av = AV.from_pretrained(out / "av", dtype="float32")
    train = load_pairs(str(tiny_pairs["train"]), "explanation")
    assert av.meta.max_new_tokens == max(len(av.response_ids(t)) for t in train.texts) < 200


def test_nla_folder_loads_and_runs(nla_dir, tiny_pairs):
    out, _, _ = nla_dir
    nla = NLA.from_pretrained(out, dtype="float32")
    assert nla.layer == 2 and nla.d_model == 64 and nla.target == "tiny"
    val = load_pairs(str(tiny_pairs["val"]), "explanation", max_rows=6)
    texts = nla.verbalize(val.vectors, max_new_tokens=24)
    assert len(texts) == 6 and all(isinstance(t, str) for t in texts)
    scores = nla.score(val.texts, val.vectors)
    assert scores["mse_nrm"].shape == (6,)
    torch.testing.assert_close(scores["mse_nrm"], 2 * (1 - scores["cos"]), atol=1e-4, rtol=0)
    # save_pretrained round trip gives the same reconstructions
    nla.save_pretrained(out / "copy")
    again = NLA.from_pretrained(out / "copy", dtype="float32")
    torch.testing.assert_close(again.reconstruct(val.texts), nla.reconstruct(val.texts), atol=1e-5, rtol=0)


def test_failed_injection_is_detected(nla_dir):
    out, _, _ = nla_dir
    av = AV.from_pretrained(out / "av", dtype="float32")

    class Ignoring(AV):
        def embed(self, ids, mask, vectors):  # the bug being guarded against: the vector never reaches the model
            return self.model.get_input_embeddings()(ids)

    broken = Ignoring(av.model, av.tok, av.meta)
    with pytest.raises(NlakitError, match="injection failed"):
        broken.check_injection()


def test_resume_equals_uninterrupted(tiny_pairs, tmp_path):
    straight = sft_config(tiny_pairs, tmp_path / "a", max_steps=6, save_every=3, eval_every=100)
    train_ar(straight)
    first = sft_config(tiny_pairs, tmp_path / "b", max_steps=3, save_every=3, eval_every=100)
    train_ar(first)
    train_ar(sft_config(tiny_pairs, tmp_path / "b", max_steps=6, save_every=3, eval_every=100))
    a = load_file(tmp_path / "a" / "train_ar" / "checkpoints" / "step_0000006" / "trainable.safetensors")
    b = load_file(tmp_path / "b" / "train_ar" / "checkpoints" / "step_0000006" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_lora_checkpoint_saves_adapters(tiny_pairs, tmp_path):
    train_ar(sft_config(tiny_pairs, tmp_path, lora=True, lora_r=4, lora_alpha=8, max_steps=2, eval_every=100))
    assert (tmp_path / "ar" / "adapter_config.json").is_file()
    assert (tmp_path / "ar" / "value_head.safetensors").is_file()
    nla = NLA.from_pretrained(tmp_path, dtype="float32")
    assert nla.reconstruct("some text").shape == (1, 64)


def test_config_overrides_and_unknown_keys(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: d\nout: o\nlr: 0.001\n")
    cfg = load_config(SFTConfig, cfg_file, ["max_steps=7", "lora=false", "base=none"])
    assert (cfg.lr, cfg.max_steps, cfg.lora, cfg.base) == (0.001, 7, False, None)
    with pytest.raises(NlakitError, match="unknown config key"):
        load_config(SFTConfig, cfg_file, ["lrr=1"])


def test_extract_explanation():
    assert extract_explanation("<explanation>\n hi there \n</explanation> junk") == ("hi there", True)
    assert extract_explanation("<explanation> cut off") == ("cut off", False)


def test_explain_per_token(nla_dir, tmp_path):
    out, _, _ = nla_dir
    nla = NLA.from_pretrained(out, dtype="float32")
    rows = nla.explain("The history of the city is long, and the people of the region", max_new_tokens=16)
    ids, acts = nla.activations("The history of the city is long, and the people of the region")
    assert [r.position for r in rows] == list(range(1, len(ids)))  # every token but the attention sink
    assert all(r.fve_nrm is not None and -10 < r.fve_nrm <= 1 for r in rows)
    assert rows[0].norm == pytest.approx(float(acts[1].norm()), rel=1e-5)
    chosen = nla.explain("The history of the city", [2, 3], max_new_tokens=8)
    assert [r.position for r in chosen] == [2, 3]
    with pytest.raises(NlakitError, match="outside"):
        nla.explain("short", [50])
    with pytest.raises(NlakitError, match="empty"):
        nla.explain("   ")
    # the CLI writes the same rows as JSON
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nlakit",
            "explain",
            "The history of the city",
            "--nla",
            str(out),
            "--json",
            str(tmp_path / "e.json"),
            "--max-new-tokens",
            "8",
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    payload = json.loads((tmp_path / "e.json").read_text())
    assert payload["layer"] == 2 and len(payload["tokens"]) == len(nla.activations("The history of the city")[0]) - 1
