"""Reference datasets both ways: nlakit reads the parquets and sidecars the reference pipeline writes (item 8), and the
reference's strict sidecar reader accepts what nlakit writes (item 9). No models are loaded here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from nlakit import dataset as ds
from nlakit.errors import NlakitError
from nlakit.meta import AR_TEMPLATE, AV_TEMPLATE, DatasetMeta, Extraction, Tokens, read_dataset_meta, write_dataset_meta


# ---- the reference's dataset sidecar reader (datagen/sidecar.py, schema 1): strict dataclasses, no defaults --------
@dataclass
class NLAExtractionMeta:
    base_model: str
    d_model: int
    layer_index: int
    norm: str
    corpus: str
    corpus_slice: dict[str, int]
    positions_per_doc: int


@dataclass
class NLAApiSummaryMeta:
    model: str
    max_tokens: int
    temperature: float
    instruction_prompt: str


@dataclass
class NLATokenMeta:
    injection_char: str
    injection_token_id: int
    injection_left_neighbor_id: int
    injection_right_neighbor_id: int
    critic_suffix_ids: list[int] | None = None


@dataclass
class NLADatasetMeta:
    dataset_id: str
    stage: str
    row_count: int
    extraction: NLAExtractionMeta
    kind: str = "nla_dataset"
    schema_version: int = 1
    keep_debug_metadata: bool = True
    tokens: NLATokenMeta | None = None
    prompt_templates: dict[str, str] = field(default_factory=dict)
    api_summaries: NLAApiSummaryMeta | None = None
    parent_datasets: list[str] = field(default_factory=list)
    created_at: str = ""
    created_by: str = ""
    git_commit: str = ""


def reference_read(text: str) -> NLADatasetMeta:
    d = yaml.safe_load(text)
    assert d["kind"] == "nla_dataset"
    assert d["schema_version"] == 1
    d["extraction"] = NLAExtractionMeta(**d["extraction"])
    if d.get("tokens") is not None:
        d["tokens"] = NLATokenMeta(**d["tokens"])
    if d.get("api_summaries") is not None:
        d["api_summaries"] = NLAApiSummaryMeta(**d["api_summaries"])
    known = {f.name for f in dataclasses.fields(NLADatasetMeta)}
    return NLADatasetMeta(**{k: v for k, v in d.items() if k in known})


def reference_write(parquet: Path, stage: str, rows: int, **extra) -> None:
    meta = {
        "dataset_id": f"{stage}_Qwen2.5-7B-Instruct_L20_ab12cd34",
        "stage": stage,
        "row_count": rows,
        "extraction": {
            "base_model": "Qwen/Qwen2.5-7B-Instruct",
            "d_model": 4,
            "layer_index": 20,
            "norm": "none",
            "corpus": "openbmb/Ultra-FineWeb",
            "corpus_slice": {"start": 0, "length": 100000},
            "positions_per_doc": 10,
        },
        "kind": "nla_dataset",
        "schema_version": 1,
        "keep_debug_metadata": True,
        "tokens": {
            "injection_char": "㈎",
            "injection_token_id": 149705,
            "injection_left_neighbor_id": 29,
            "injection_right_neighbor_id": 522,
            "critic_suffix_ids": [1318, 29, 366, 1708, 29],
        },
        "prompt_templates": {"actor": AV_TEMPLATE, "critic": AR_TEMPLATE},
        **extra,
    }
    parquet.with_name(parquet.name + ".nla_meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def _vectors(n: int = 6) -> np.ndarray:
    return np.arange(n * 4, dtype=np.float64).reshape(n, 4) + 1.0


def _list_column(v: np.ndarray) -> pa.Array:
    return pa.array(v.tolist(), pa.list_(pa.float64()))  # list<double>, as pandas/to_pylist writers produce


def test_reads_av_sft_parquet(tmp_path):
    v = _vectors()
    prompt = [[{"role": "user", "content": AV_TEMPLATE.replace("{injection_char}", "<INJECT>")}]] * 6
    table = pa.table(
        {
            "prompt": prompt,
            "response": [f"<explanation>\nfeature {i}\n\nmore {i}\n</explanation>" for i in range(6)],
            "activation_vector": _list_column(v),
            "n_raw_tokens": [51 + i for i in range(6)],
            "activation_layer": [20] * 6,
            "doc_id": [f"c:en:{i}" for i in range(6)],
            "detokenized_text_truncated": [f"text {i}" for i in range(6)],
        }
    )
    path = tmp_path / "av_sft.parquet"
    pq.write_table(table, path)
    reference_write(path, "av_sft", 6)
    got, meta = ds.load(path)
    assert meta.extraction.layer_index == 20 and meta.tokens.injection_token_id == 149705
    assert meta.prompt_templates["av"] == AV_TEMPLATE
    np.testing.assert_array_equal(ds.vectors_of(got), v.astype(np.float32))
    assert got.column("explanation").to_pylist()[2] == "feature 2\n\nmore 2"
    assert got.column("position").to_pylist()[:2] == [50, 51]
    assert got.column("context").to_pylist()[1] == "text 1" and got.column("layer").to_pylist()[0] == 20
    assert "prompt" in got.column_names  # chat messages kept as they are
    sub = ds.read_table(f"{path}@[2:4]", ["explanation", "position", "activation_vector"])
    assert sub.column("position").to_pylist() == [52, 53]
    np.testing.assert_array_equal(ds.vectors_of(sub), v[2:4].astype(np.float32))
    assert read_dataset_meta(f"{path}@[2:4]").row_count == 6  # the slice shares the file's sidecar


def test_reads_ar_sft_and_stage2_parquets(tmp_path):
    v = _vectors(3)
    ar = tmp_path / "ar_sft.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt": [AR_TEMPLATE.format(explanation=f"about {i}") for i in range(3)],
                "activation_vector": _list_column(v),
                "n_raw_tokens": [60, 61, 62],
            }
        ),
        ar,
    )
    assert ds.read_table(ar, ["explanation"]).column("explanation").to_pylist() == ["about 0", "about 1", "about 2"]
    explained = tmp_path / "explained.parquet"
    flat = pa.array(v.astype(np.float32).reshape(-1))
    pq.write_table(
        pa.table(
            {
                "activation_vector": pa.FixedSizeListArray.from_arrays(flat, 4),
                "api_explanation": ["a", "b", "c"],
                "detokenized_text_truncated": ["x", "y", "z"],
            }
        ),
        explained,
    )
    t = ds.read_table(explained, ["explanation", "context"])
    assert t.column("explanation").to_pylist() == ["a", "b", "c"] and t.column("context").to_pylist() == ["x", "y", "z"]


def test_missing_column_and_bad_vectors_are_clear(tmp_path):
    path = tmp_path / "rl.parquet"
    prompt = [[{"role": "user", "content": "x <INJECT>"}]] * 2
    pq.write_table(pa.table({"prompt": prompt, "activation_vector": _list_column(_vectors(2))}), path)
    with pytest.raises(NlakitError, match=r"no column 'explanation' \(nor api_explanation, response, prompt\)"):
        ds.read_table(path, ["explanation"])
    with pytest.raises(NlakitError, match="FILE@\\[start:stop\\]"):
        ds.read_table(f"{path}@[a:b]")
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"activation_vector": pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float64()))}), ragged)
    with pytest.raises(NlakitError, match="different lengths"):
        ds.vectors_of(ds.read_table(ragged))


def test_nlakit_sidecar_is_readable_by_the_reference(tmp_path):
    """Item 9: strict NLAExtractionMeta / NLAApiSummaryMeta keys, corpus_slice kept; nlakit's extras round-trip."""
    folder = tmp_path / "acts"
    folder.mkdir()
    ext = Extraction(
        base_model="smollm2-135m",
        d_model=4,
        layer_index=20,
        corpus="wiki",
        positions_per_doc=5,
        min_position=16,
        max_tokens=256,
        seed=0,
        dtype="float32",
        mean_norm=12.5,
    )
    meta = DatasetMeta(
        extraction=ext,
        dataset_id="base_x",
        stage="ar_sft",
        row_count=10,
        tokens=Tokens("¬", 32557, 46, 9617, [2692, 46]),
        prompt_templates={"av": AV_TEMPLATE, "ar": AR_TEMPLATE},
        api_summaries={"model": "grounded", "max_tokens": 300, "temperature": 0.0, "instruction_prompt": "p", "x": 1},
    )
    write_dataset_meta(folder, meta)
    ref = reference_read((folder / "nla_meta.yaml").read_text())
    assert ref.extraction.corpus_slice == {"start": 0, "length": None}  # every document
    assert ref.extraction.layer_index == 20 and ref.api_summaries.model == "grounded"
    back = read_dataset_meta(folder)
    assert back.extraction == dataclasses.replace(ext, corpus_slice={"start": 0, "length": None})
    assert back.api_summaries["x"] == 1
    # a reference sidecar's slice survives a read/write through nlakit (e.g. `nla split`)
    src = tmp_path / "ref.parquet"
    pq.write_table(pa.table({"activation_vector": _list_column(_vectors(2))}), src)
    reference_write(src, "base", 2)
    copy = tmp_path / "copy"
    copy.mkdir()
    write_dataset_meta(copy, read_dataset_meta(src))
    assert reference_read((copy / "nla_meta.yaml").read_text()).extraction.corpus_slice == {
        "start": 0,
        "length": 100000,
    }
