from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from nlakit import dataset as ds
from nlakit.errors import NlakitError
from nlakit.extract import ExtractConfig, LayerCapture, extract, sample_positions
from nlakit.meta import read_dataset_meta
from nlakit.models import load_backbone, load_causal_lm, load_tokenizer


def test_layer_k_is_hidden_states_k_plus_1():
    """Our hook on block K of a model truncated to K+1 blocks equals the full model's hidden_states[K+1].

    The last entry of HF hidden_states has the final norm applied, so the last block is checked against a forward
    hook on the full model instead (we always capture the pre-norm residual stream)."""
    tok = load_tokenizer("tiny")
    ids = tok(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")["input_ids"]
    full = load_causal_lm("tiny", dtype="float32")
    with torch.no_grad():
        hs = full(input_ids=ids, output_hidden_states=True).hidden_states
    n = full.config.num_hidden_layers
    full_hook = LayerCapture(full, [n - 1])
    with torch.no_grad():
        full(input_ids=ids)
    for k in range(n):
        trunc = load_backbone("tiny", num_layers=k + 1, dtype="float32")
        assert len(trunc.layers) == k + 1
        cap = LayerCapture(trunc, [k])
        with torch.no_grad():
            trunc(input_ids=ids)
        expected = hs[k + 1] if k < n - 1 else full_hook.outputs[k]
        torch.testing.assert_close(cap.outputs[k], expected, rtol=0, atol=1e-5)
        # and not the neighbouring index (the README off-by-one of the reference)
        assert not torch.allclose(cap.outputs[k], hs[k], atol=1e-3)


def test_sampling_is_keyed_per_document():
    ids = list(range(100, 180))
    a = sample_positions(ids, "doc:1", seed=3, n=5, min_position=10)
    assert a == sample_positions(ids, "doc:1", seed=3, n=5, min_position=10)
    assert a != sample_positions(ids, "doc:2", seed=3, n=5, min_position=10)
    assert a != sample_positions(ids, "doc:1", seed=4, n=5, min_position=10)
    assert all(p >= 10 for p in a) and len(set(a)) == 5 and a == sorted(a)
    assert 0 not in sample_positions(ids, "d", seed=0, n=80, min_position=0)  # position 0 (attention sink) never used
    assert sample_positions(ids[:5], "d", seed=0, n=3, min_position=10) == []
    assert 120 not in [
        ids[p] for p in sample_positions(ids, "d", seed=0, n=80, min_position=1, special_ids=frozenset({120}))
    ]


def _cfg(corpus_path: Path, out: Path, **kw) -> ExtractConfig:
    base = dict(
        model="tiny",
        layers=[2],
        corpus=str(corpus_path),
        out=out,
        positions_per_doc=4,
        min_position=4,
        dtype="float32",
        chunk_docs=8,
        batch_size=4,
    )
    base.update(kw)
    return ExtractConfig(**base)


def test_rows_do_not_depend_on_batching(tiny_corpus, tmp_path):
    extract(_cfg(tiny_corpus, tmp_path / "a", batch_size=1, chunk_docs=5))
    extract(_cfg(tiny_corpus, tmp_path / "b", batch_size=16, chunk_docs=16))
    a, b = ds.read_table(tmp_path / "a"), ds.read_table(tmp_path / "b")
    for col in ("doc_id", "position", "token", "context", "layer"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist()
    np.testing.assert_allclose(ds.vectors_of(a), ds.vectors_of(b), atol=1e-4)
    meta = read_dataset_meta(tmp_path / "a")
    assert meta.row_count == a.num_rows and meta.extraction.layer_index == 2 and meta.extraction.d_model == 64
    assert a.column("activation_vector").type == pa.list_(pa.float32(), 64)


def test_multi_layer_pass_matches_single_layer(tiny_corpus, tmp_path):
    extract(_cfg(tiny_corpus, tmp_path / "multi", layers=[1, 3], max_docs=10))
    extract(_cfg(tiny_corpus, tmp_path / "one", layers=[1], max_docs=10))
    multi = ds.read_table(tmp_path / "multi" / "layer_1")
    one = ds.read_table(tmp_path / "one")
    np.testing.assert_allclose(ds.vectors_of(multi), ds.vectors_of(one), atol=1e-5)
    assert set(ds.read_table(tmp_path / "multi" / "layer_3").column("layer").to_pylist()) == {3}


def test_sigkill_then_resume_equals_uninterrupted(tiny_corpus, tmp_path):
    env = dict(os.environ)
    killed = tmp_path / "killed"
    code = (
        "import sys; from pathlib import Path; from nlakit.extract import ExtractConfig, extract\n"
        f"extract(ExtractConfig(model='tiny', layers=[2], corpus={str(tiny_corpus)!r}, out=Path(sys.argv[1]),"
        " positions_per_doc=4, min_position=4, dtype='float32', chunk_docs=2, batch_size=1))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(killed)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list(killed.glob("part-*.parquet")))
    assert 3 <= n_before < 20, "the run should have been killed mid-way"
    # resume, then an uninterrupted reference run
    extract(_cfg(tiny_corpus, killed, chunk_docs=2, batch_size=1))
    extract(_cfg(tiny_corpus, tmp_path / "clean", chunk_docs=2, batch_size=1))
    a, b = ds.read_table(killed), ds.read_table(tmp_path / "clean")
    assert a.num_rows == b.num_rows
    assert a.column("doc_id").to_pylist() == b.column("doc_id").to_pylist()
    assert a.column("position").to_pylist() == b.column("position").to_pylist()
    np.testing.assert_array_equal(ds.vectors_of(a), ds.vectors_of(b))
    assert not list(killed.glob(".*.tmp"))


def test_resume_with_other_settings_is_refused(tiny_corpus, tmp_path):
    extract(_cfg(tiny_corpus, tmp_path / "x", max_docs=4))
    with pytest.raises(NlakitError, match="other settings"):
        extract(_cfg(tiny_corpus, tmp_path / "x", max_docs=4, seed=9))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"corpus": "/nonexistent/file.txt"}, "not 'wiki'"),
        ({"layers": [4]}, "out of range.*0..3"),
        ({"layers": [-1]}, "out of range"),
        ({"model": "/nonexistent/model"}, "neither an alias"),
    ],
)
def test_bad_input_one_line_errors(tiny_corpus, tmp_path, kwargs, pattern):
    with pytest.raises(NlakitError, match=pattern) as e:
        extract(_cfg(tiny_corpus, tmp_path / "o", **kwargs))
    assert "\n" not in str(e.value)


def test_empty_corpus_and_weightless_model(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(NlakitError, match="no non-empty documents"):
        extract(_cfg(empty, tmp_path / "o"))
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(NlakitError, match="no weights"):
        extract(_cfg(empty, tmp_path / "o2", model=str(folder)))


def test_corrupt_parquet_is_reported(tiny_corpus, tmp_path):
    out = tmp_path / "x"
    extract(_cfg(tiny_corpus, out, max_docs=4))
    part = sorted(out.glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # truncated file
    with pytest.raises(NlakitError, match="not a readable parquet.*delete it and re-run") as e:
        ds.read_table(out)
    assert "\n" not in str(e.value)


def test_cli_error_is_one_line_with_exit_2(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nlakit",
            "extract",
            "--model",
            "tiny",
            "--layer",
            "99",
            "--corpus",
            "wiki",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "out of range" in lines[0]


def test_split_is_document_level_and_seeded(tiny_corpus, tmp_path):
    extract(_cfg(tiny_corpus, tmp_path / "x"))
    counts = ds.split(tmp_path / "x", tmp_path / "s", {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    docs = {n: set(ds.read_table(tmp_path / "s" / n).column("doc_id").to_pylist()) for n in counts}
    assert not (docs["train"] & docs["val"]) and not (docs["train"] & docs["test"]) and not (docs["val"] & docs["test"])
    assert sum(counts.values()) == ds.read_table(tmp_path / "x").num_rows
    assert read_dataset_meta(tmp_path / "s" / "test").row_count == counts["test"]
    again = ds.split_doc_ids(
        sorted(docs["train"] | docs["val"] | docs["test"]), {"train": 0.6, "val": 0.2, "test": 0.2}, 1
    )
    assert again["test"] == docs["test"]


@pytest.mark.parametrize("command", [[], ["extract"], ["split"], ["datagen"], ["train", "ar"], ["train", "av"]])
def test_cli_help(command):
    r = subprocess.run([sys.executable, "-m", "nlakit", *command, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Usage" in r.stdout
