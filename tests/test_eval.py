"""`nla eval` on the tiny NLA: the report's arithmetic, its files, and the pure helpers it is built from."""

from __future__ import annotations

import json

import pytest

from nlakit.errors import NlakitError
from nlakit.eval import (
    EvalConfig,
    edit_toward,
    english_word_share,
    eval_documents,
    logit_lens_text,
    run_eval,
    token_kind,
)


def test_edit_toward_rewrites_the_quoted_guesses():
    e = 'Last token "as". The model expects "a", "the" next.'
    assert edit_toward(e, "dog") == 'Last token "dog". The model expects "dog", "dog" next. The subject is dog.'
    assert edit_toward("No quotes here.", "cat").endswith('expects "cat" next. The subject is cat.')


def test_small_helpers():
    assert english_word_share(["The cat sat", "zzqx the"], {"the", "cat", "sat"}) == pytest.approx(4 / 5)
    assert [token_kind(t) for t in (" the", "ing", "1990", ",", " ")] == [
        "word start",
        "word piece",
        "number",
        "punctuation",
        "whitespace",
    ]
    assert logit_lens_text([" a", "the"]) == 'The model expects "a", "the" next.'


def test_split_documents_match_nla_split():
    from nlakit.corpus import load_corpus
    from nlakit.dataset import split_doc_ids

    docs = eval_documents(EvalConfig(out="x", corpus="wiki", split="test"))
    ids = [d.id for d in load_corpus("wiki")]
    assert {d.id for d in docs} == split_doc_ids(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, 42)["test"]
    with pytest.raises(NlakitError, match="exactly one"):
        eval_documents(EvalConfig(out="x"))
    with pytest.raises(NlakitError, match="--split"):
        eval_documents(EvalConfig(out="x", corpus="wiki", split="dev"))


def test_eval_report(nla_dir, tiny_corpus, tmp_path):
    from nlakit.nla import NLA

    nla = NLA.from_pretrained(nla_dir[0], dtype="float32")
    cfg = EvalConfig(
        out=str(tmp_path / "rep"),
        texts=str(tiny_corpus),
        max_positions=24,
        min_position=2,
        max_new_tokens=24,
        steer_cases=[("The cat sat on the", "mat"), ("I like to eat", "bread")],
    )
    r = run_eval(cfg, nla)
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["n"] == r["n"] == 24 and saved["documents"] == 8  # 3 positions per document
    for key in ("fve_nrm", "cos_mean", "mse_nrm"):
        assert saved[key] == pytest.approx(r[key])
    assert r["fve_nrm"] == pytest.approx(1 - r["mse_nrm"] / r["rawvar"])
    # predicting the mean scores exactly the meannorm baseline
    assert r["baselines"]["mean"]["mse_nrm"] == pytest.approx(r["meannorm"], rel=1e-4)
    assert r["baselines"]["mean"]["fve_meannorm"] == pytest.approx(0.0, abs=1e-4)
    assert set(r["probes"]) == {"sentence_shuffle", "synonyms", "no_quotes", "word_shuffle", "other_explanation"}
    assert r["truncation"]["full"] == r["fve_nrm"]
    rt = r["round_trip"]
    assert all(v["kl_mean"] >= -1e-6 for v in rt.values())
    assert rt["random"]["kl_mean"] > 0
    assert len(r["steering"]["cases"]) == 2 and all("shift" in c for c in r["steering"]["cases"])
    assert sum(v["n"] for v in r["breakdown"]["position"].values()) == 24
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "fve_nrm" in md and "Steganography" in md and "Round-trip" in md
    for png in ("fidelity.png", "probes.png", "causal.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 5000


def test_eval_cli_errors(tmp_path):
    from typer.testing import CliRunner

    from nlakit.cli import app

    bad = tmp_path / "docs.csv"
    bad.write_text("a,b\n")
    # inputs are checked before any model loads (the --nla folder here is not even an NLA)
    res = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "o"), "--texts", str(bad), "--nla", str(tmp_path)])
    assert isinstance(res.exception, NlakitError) and ".txt" in str(res.exception)
