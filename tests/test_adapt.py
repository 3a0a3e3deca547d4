"""Adapting a trained AR to its AV's own text: `nla datagen --provider nla` writes the AV's greedy explanations of
each row's vector (resumable, cached), and `nla train ar init_from=NLA` continues from that NLA's AR. Expert
iteration: `--best-of N` keeps the AR's pick per row, and `nla train av init_from=NLA` continues that NLA's AV."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from conftest import sft_config
from nlakit import dataset as ds
from nlakit.datagen import datagen
from nlakit.explainers import make_explainer
from nlakit.meta import read_model_meta, write_model_meta
from nlakit.nla import NLA
from nlakit.train.sft_ar import train_ar
from nlakit.train.sft_av import train_av


@pytest.fixture(scope="module")
def av_explained(nla_dir, tiny_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt") / "explained"
    result = datagen(tiny_pairs["train"], out, make_explainer("nla", model=str(nla_dir[0]), dtype="float32"))
    return out, result


def test_nla_explainer_writes_the_avs_greedy_explanations(av_explained, nla_dir, tiny_pairs):
    out, result = av_explained
    table = ds.read_table(out)
    src = ds.read_table(tiny_pairs["train"])
    assert result.rows == table.num_rows > 0 and result.dropped == src.num_rows - table.num_rows
    nla = NLA.from_pretrained(nla_dir[0], dtype="float32")
    # Verbalize exactly the batch datagen sent first (its first 32 rows, all distinct contexts): greedy decoding of the
    # same batch is the same on every CPU, while another batch composition pads differently and may round differently.
    first = src.slice(0, 32)
    assert len(set(first.column("context").to_pylist())) == first.num_rows == 32
    said = nla.verbalize(ds.vectors_of(first), max_new_tokens=nla.av.meta.max_new_tokens, temperature=0.0)
    expected = [t for t in said if t.strip()]
    assert len(expected) >= 16 and table.column("explanation").to_pylist()[: len(expected)] == expected
    # the explanation follows the vector, not the text: it is not the teacher's (the source column) for every row
    assert table.column("explanation").to_pylist() != src.column("explanation").to_pylist()[: table.num_rows]
    again = datagen(tiny_pairs["train"], out, make_explainer("nla", model=str(nla_dir[0]), dtype="float32"))
    assert again.explained_now == 0 and again.rows == result.rows  # resumed from its parts: nothing explained twice


def test_ar_init_from_continues_the_trained_ar(av_explained, nla_dir, tmp_path):
    data, _ = av_explained
    pairs = {"train": data, "val": data}
    src = NLA.from_pretrained(nla_dir[0], dtype="float32")
    texts = ds.read_table(data).column("explanation").to_pylist()[:4]
    # lr 0: the adapted AR must be exactly the one it started from (a fresh AR would predict something else)
    train_ar(sft_config(pairs, tmp_path / "a", init_from=str(nla_dir[0]), lr=0.0, max_steps=2, eval_every=2))
    adapted = NLA.from_pretrained(tmp_path / "a", ar=tmp_path / "a" / "ar", dtype="float32")
    torch.testing.assert_close(adapted.reconstruct(texts), src.reconstruct(texts))
    meta = read_model_meta(tmp_path / "a" / "ar")
    assert meta.parent_checkpoints == [str(nla_dir[0] / "ar")] and meta.tokens == src.ar.meta.tokens


def test_expert_iteration_data_and_av_init_from(nla_dir, tiny_pairs, tmp_path):
    out = tmp_path / "best"
    picked = datagen(
        tiny_pairs["train"], out, make_explainer("nla", model=str(nla_dir[0]), dtype="float32", best_of=3), max_rows=12
    )
    greedy = datagen(
        tiny_pairs["train"],
        tmp_path / "greedy",
        make_explainer("nla", model=str(nla_dir[0]), dtype="float32"),
        max_rows=12,
    )
    assert picked.rows == greedy.rows > 0
    nla = NLA.from_pretrained(nla_dir[0], dtype="float32")
    tp, tg = ds.read_table(out), ds.read_table(tmp_path / "greedy")
    assert tp.column("context").to_pylist() == tg.column("context").to_pylist()
    vec = torch.from_numpy(ds.vectors_of(tp)).float()
    mse_p = nla.score(tp.column("explanation").to_pylist(), vec)["mse_nrm"]
    mse_g = nla.score(tg.column("explanation").to_pylist(), vec)["mse_nrm"]
    assert bool((mse_p <= mse_g + 1e-4).all())  # the greedy text is a candidate, so a pick is never worse
    # lr 0: the AV trained further must be exactly the one it started from, prompt and injection scale included
    # the parent's generation cap carries on too (an RL'd AV records the length it was trained to write)
    parent = tmp_path / "parent"
    shutil.copytree(nla_dir[0], parent)
    pmeta = read_model_meta(parent / "av")
    write_model_meta(parent / "av", replace(pmeta, training={**(pmeta.training or {}), "max_new_tokens": 37}))
    pairs = {"train": out, "val": out}
    train_av(sft_config(pairs, tmp_path / "av", init_from=str(parent), lr=0.0, max_steps=2, eval_every=2))
    meta = read_model_meta(tmp_path / "av" / "av")
    assert meta.parent_checkpoints == [str(parent / "av")]
    assert meta.injection_scale == nla.av.meta.injection_scale and meta.prompt_templates == nla.av.meta.prompt_templates
    assert meta.max_new_tokens == 37
    again = NLA.from_pretrained(nla_dir[0], av=tmp_path / "av" / "av", dtype="float32")
    assert again.verbalize(vec[:4], max_new_tokens=12) == nla.verbalize(vec[:4], max_new_tokens=12)


def test_ar_init_from_can_switch_to_the_quote_template(av_explained, nla_dir, tmp_path):
    """`ar_template=` names a new reading for an adapted AR: the sidecar records it (and its fixed suffix ids), and
    a reload reads with it; a template without {explanation} is refused before any training."""
    from nlakit.errors import NlakitError
    from nlakit.injection import critic_suffix_ids
    from nlakit.meta import AR_QUOTE_TEMPLATE

    data, _ = av_explained
    pairs = {"train": data, "val": data}
    cfg = sft_config(pairs, tmp_path / "q", init_from=str(nla_dir[0]), max_steps=2, eval_every=2)
    train_ar(replace(cfg, ar_template=AR_QUOTE_TEMPLATE))
    meta = read_model_meta(tmp_path / "q" / "ar")
    assert meta.ar_template == AR_QUOTE_TEMPLATE and meta.parent_checkpoints == [str(nla_dir[0] / "ar")]
    nla = NLA.from_pretrained(tmp_path / "q", ar=tmp_path / "q" / "ar", dtype="float32")
    assert meta.tokens.critic_suffix_ids == critic_suffix_ids(nla.ar.tok, AR_QUOTE_TEMPLATE)
    assert nla.ar.prompts(['it reads "x y"'])[0].endswith("<summary> x y")
    with pytest.raises(NlakitError, match="ar_template must contain"):
        train_ar(replace(cfg, out=str(tmp_path / "bad"), ar_template="no slot"))
