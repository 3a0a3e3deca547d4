from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nlakit import dataset as ds
from nlakit.datagen import datagen
from nlakit.explainers import GroundedExplainer, make_explainer
from nlakit.extract import ExtractConfig, extract
from nlakit.meta import read_dataset_meta
from nlakit.models import load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def acts(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("dg") / "acts"
    extract(
        ExtractConfig(
            model="tiny",
            layers=[2],
            corpus=str(tiny_corpus),
            out=out,
            positions_per_doc=6,
            min_position=2,
            dtype="float32",
        )
    )
    return out


@pytest.fixture(scope="module")
def grounded():
    return GroundedExplainer("tiny", dtype="float32")


def test_grounded_is_a_fixed_format_of_the_context(acts, grounded):
    contexts = ds.read_table(acts, ["context"]).column("context").to_pylist()[:12]
    a, b = grounded.explain(contexts), grounded.explain(contexts)
    assert a == b
    for ctx, text in zip(contexts, a, strict=True):
        lines = text.split("\n")
        assert [ln.split(" ", 1)[0] for ln in lines[1:]] == ["Recent", "Current", "Predicted"], text
        # the quote is the context's last six whole words, never a sub-word fragment
        assert lines[1] == 'Recent words: "' + " ".join(ctx.split()[-6:]) + '".'
        n_tok = len(grounded.tok(text)["input_ids"])
        assert 20 <= n_tok <= 90, (n_tok, text)


def test_grounded_fields():
    from nlakit.explainers.grounded import keywords, plain_text, register_of

    chat = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\nMix flour and"
    assert register_of(chat) == "Chat, the assistant replying"
    assert register_of(chat.rsplit("<|im_start|>", 1)[0]) == "Chat, the user writing"
    assert register_of("def f(x):\n    return x") == "Source code"
    assert register_of("The cat sat on the mat.") == "Prose"
    assert "<|" not in plain_text(chat) and "assistant" not in plain_text(chat)
    # rare words name the topic; frequent ones ("term", "known") do not
    kws = keywords("The term is known for its use. Chechnya is a republic in the North Caucasus.")
    assert "Chechnya" in kws and "term" not in kws


def test_grounded_predictions_are_the_models_argmax(acts, grounded):
    contexts = ds.read_table(acts, ["context"]).column("context").to_pylist()[:10]
    tok = load_tokenizer("tiny")
    model = load_causal_lm("tiny", dtype="float32")
    preds = grounded.top_predictions(contexts)
    for ctx, p in zip(contexts, preds, strict=True):
        ids = tok(ctx, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            argmax = int(model(input_ids=ids).logits[0, -1].argmax())
        assert p[0] == argmax
    text = grounded.explain(contexts[:1])[0]
    top = tok.decode([preds[0][0]]).strip() or tok.decode([preds[0][0]])
    assert f'"{top}"' in text


def test_prefix_sharing_matches_separate_forwards(grounded):
    base = "The history of the Roman Empire spans many centuries and"
    contexts = [base, base + " includes", "Something unrelated entirely", base + " includes the fall"]
    together = grounded.top_predictions(contexts)
    alone = [grounded.top_predictions([c])[0] for c in contexts]
    assert together == alone


def test_datagen_writes_column_and_sidecar(acts, grounded, tmp_path):
    res = datagen(acts, tmp_path / "ex", grounded, chunk_rows=32)
    table, meta = ds.load(tmp_path / "ex")
    src = ds.read_table(acts)
    assert table.num_rows == src.num_rows == res.rows and res.dropped == 0
    assert table.column("doc_id").to_pylist() == src.column("doc_id").to_pylist()
    assert meta.stage == "explained" and meta.api_summaries["provider"] == "grounded"
    assert meta.parent_datasets and meta.extraction.layer_index == 2
    # a second run is served from the parts (nothing to do)
    again = datagen(acts, tmp_path / "ex", grounded, chunk_rows=32)
    assert again.explained_now == 0 and again.rows == res.rows


def test_datagen_killed_then_resumed_loses_nothing(acts, tmp_path):
    out = tmp_path / "killed"
    code = (
        "import sys; from nlakit.datagen import datagen; from nlakit.explainers import GroundedExplainer\n"
        f"datagen({str(acts)!r}, sys.argv[1], GroundedExplainer('tiny', dtype='float32', batch_size=1),"
        " chunk_rows=8, flush_rows=2)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env=dict(os.environ))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_parts = len(list(out.glob("part-*.parquet")))
    n_total = (ds.read_table(acts).num_rows + 7) // 8
    assert 3 <= n_parts < n_total, "killed mid-way"
    datagen(acts, out, GroundedExplainer("tiny", dtype="float32"), chunk_rows=8, flush_rows=2)
    datagen(acts, tmp_path / "clean", GroundedExplainer("tiny", dtype="float32"), chunk_rows=8)
    a, b = ds.read_table(out), ds.read_table(tmp_path / "clean")
    assert a.column("explanation").to_pylist() == b.column("explanation").to_pylist()
    assert a.column("position").to_pylist() == b.column("position").to_pylist()
    assert read_dataset_meta(out).row_count == b.num_rows


def test_unknown_provider():
    from nlakit.errors import NlakitError

    with pytest.raises(NlakitError, match="unknown explainer"):
        make_explainer("nope")


def test_datagen_refuses_to_mix_settings(acts, grounded, tmp_path):
    from nlakit.errors import NlakitError

    datagen(acts, tmp_path / "ex", grounded, chunk_rows=8, max_rows=10)
    with pytest.raises(NlakitError, match="other settings"):
        datagen(acts, tmp_path / "ex", grounded, chunk_rows=8)


def test_datagen_sample_seed(acts, grounded, tmp_path):
    """--max-rows with --sample-seed: a seeded sample from the whole source, in source order, not the first rows."""
    from nlakit.errors import NlakitError

    src = ds.read_table(acts, ["doc_id", "position"])
    keys = list(zip(src.column("doc_id").to_pylist(), src.column("position").to_pylist(), strict=True))
    n = len(keys) // 2
    datagen(acts, tmp_path / "a", grounded, chunk_rows=8, max_rows=n, sample_seed=3)
    datagen(acts, tmp_path / "b", grounded, chunk_rows=8, max_rows=n, sample_seed=3)
    a, b = ds.read_table(tmp_path / "a"), ds.read_table(tmp_path / "b")
    got = list(zip(a.column("doc_id").to_pylist(), a.column("position").to_pylist(), strict=True))
    assert got == list(zip(b.column("doc_id").to_pylist(), b.column("position").to_pylist(), strict=True))
    assert len(got) == n and got != keys[:n]  # not the first rows
    where = [keys.index(k) for k in got]
    assert where == sorted(where) and where[-1] >= n  # in source order, reaching past the first n
    assert datagen(acts, tmp_path / "a", grounded, chunk_rows=8, max_rows=n, sample_seed=3).explained_now == 0
    assert read_dataset_meta(tmp_path / "a").api_summaries["sample"]["seed"] == 3
    with pytest.raises(NlakitError, match="other settings"):
        datagen(acts, tmp_path / "a", grounded, chunk_rows=8, max_rows=n, sample_seed=4)
    # N at least the source's rows: nothing is sampled, so the output is the whole source with or without a seed
    datagen(acts, tmp_path / "all", grounded, chunk_rows=8, max_rows=len(keys), sample_seed=3)
    assert datagen(acts, tmp_path / "all", grounded, chunk_rows=8).explained_now == 0
    with pytest.raises(NlakitError, match="give --max-rows"):
        datagen(acts, tmp_path / "c", grounded, chunk_rows=8, sample_seed=3)
