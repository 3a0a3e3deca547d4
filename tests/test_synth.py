"""Offline registers (`nla synth`) and splitting several datasets together by document."""

from __future__ import annotations

import json

import pytest

from nlakit.errors import NlakitError
from nlakit.synth import REGISTERS, SynthConfig, prompt_for, synthesize


def test_prompts_are_seeded_and_varied():
    assert prompt_for("chat", 3, 0) == prompt_for("chat", 3, 0)
    assert len({prompt_for("fiction", n, 0) for n in range(40)}) > 30


def test_synth_writes_every_register(tmp_path):
    out = tmp_path / "synth.jsonl"
    cfg = SynthConfig(out=out, model="tiny", docs_per_register=2, max_new_tokens=12, min_words=0, dtype="float32")
    counts = synthesize(cfg)
    assert counts == {r: 2 for r in REGISTERS}
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len({r["id"] for r in rows}) == len(rows)
    chat = [r for r in rows if r["register"] == "chat"]
    # chat documents are whole conversations in the target's own template: the user turn and the reply
    assert all(r["text"].count("<|im_start|>") >= 2 and r["prompt"] in r["text"] for r in chat)
    assert all(r["id"].startswith("code:rich/") and len(r["text"]) > 400 for r in rows if r["register"] == "code")
    # reproducible: the same seed writes the same corpus
    again = tmp_path / "again.jsonl"
    synthesize(SynthConfig(**{**cfg.__dict__, "out": again}))
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    with pytest.raises(NlakitError, match="unknown register"):
        synthesize(SynthConfig(out=out, registers=("poetry",)))


def test_split_several_sources_together(tiny_pairs, tmp_path):
    from nlakit import dataset as ds

    # two sources with disjoint documents (train and val of the fixture) are split as one, by document
    counts = ds.split([tiny_pairs["train"], tiny_pairs["val"]], tmp_path / "s", {"train": 0.5, "val": 0.5, "test": 0})
    total = sum(ds.read_table(p, ["doc_id"]).num_rows for p in (tiny_pairs["train"], tiny_pairs["val"]))
    assert sum(counts.values()) == total
    docs = {
        n: set(ds.read_table(tmp_path / "s" / n, ["doc_id"]).column("doc_id").to_pylist()) for n in ("train", "val")
    }
    assert docs["train"] and docs["val"] and not docs["train"] & docs["val"]
    meta = ds.read_dataset_meta(tmp_path / "s" / "train")
    assert len(meta.parent_datasets) == 2
    with pytest.raises(NlakitError, match="is in both"):
        ds.split([tiny_pairs["train"], tiny_pairs["train"]], tmp_path / "t", {"train": 1.0, "val": 0, "test": 0})


def test_synth_resumes_from_finished_batches(tmp_path):
    out = tmp_path / "synth.jsonl"
    cfg = SynthConfig(
        out=out,
        model="tiny",
        registers=("chat", "news"),
        docs_per_register=2,
        max_new_tokens=8,
        min_words=0,
        batch_size=2,
        dtype="float32",
    )
    synthesize(cfg)
    straight = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    # a run killed after its first batch left that batch in the side file; the rerun keeps it and makes the rest
    key = json.dumps({k: str(v) for k, v in vars(cfg).items() if k != "out"}, sort_keys=True)
    kept = ["kept reply one", "kept reply two"]
    (tmp_path / "synth.partial.jsonl").write_text(key + "\n" + json.dumps({"batch": 0, "replies": kept}) + "\n")
    synthesize(cfg)
    resumed = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in resumed] == [r["id"] for r in straight]
    assert kept[0] in resumed[0]["text"] and kept[1] in resumed[1]["text"]
    assert resumed[2:] == straight[2:]  # later batches are seeded by their index, not by what ran before
    assert not (tmp_path / "synth.partial.jsonl").exists()
