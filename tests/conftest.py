from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def nlakit_home(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Fast tests build `tiny` in a private cache; the slow tier keeps the user's cache (the converted SmolLM2)."""
    if request.config.getoption("-m") == "slow":
        yield Path(os.environ.get("NLAKIT_HOME", ""))
        return
    home = tmp_path_factory.mktemp("nlakit_home")
    old = os.environ.get("NLAKIT_HOME")
    os.environ["NLAKIT_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("NLAKIT_HOME", None)
    else:
        os.environ["NLAKIT_HOME"] = old


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .txt corpus of 40 documents of real prose (from the embedded wiki corpus)."""
    from nlakit.corpus import load_corpus

    docs = load_corpus("wiki", max_docs=40)
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(d.text.replace("\n\n", "\n") for d in docs), encoding="utf-8")
    return path


def write_pairs(src: Path, dest: Path, explanation_of, keep=lambda row: True) -> Path:
    """Copy an activations dataset adding an `explanation` column computed from each row (a synthetic task)."""
    from dataclasses import replace

    import pyarrow as pa

    from nlakit import dataset as ds
    from nlakit.meta import write_dataset_meta

    table, meta = ds.load(src)
    table = table.filter(pa.array([bool(keep(r)) for r in table.to_pylist()]))
    rows = table.to_pylist()
    cols = {k: [r[k] for r in rows] for k in table.column_names if k != "activation_vector"}
    cols["explanation"] = [explanation_of(r) for r in rows]
    ds.write_parquet(dest / ds.part_name(0), ds.make_table(ds.vectors_of(table), cols))
    write_dataset_meta(dest, replace(meta, stage="explained", created_at=""))
    return dest


FREQUENT = {",", " the", ".", " of", " and", " in", " a", " is"}


def _token_explanation(row: dict) -> str:
    # The vectors of a random tiny model are mostly their token's embedding (token identity explains ~89% of their
    # variance), so naming the token makes the task learnable; only frequent tokens are kept so that validation
    # tokens were seen in training (a random model cannot generalise to unseen ones); repeating the word lets a
    # random-init AR's near-uniform attention carry it to the last position.
    word = {",": "comma", ".": "period"}.get(row["token"].strip(), row["token"].strip())
    return f"The text ends with the token '{word}'. " + " ".join([word] * 8)


@pytest.fixture(scope="session")
def tiny_pairs(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train/val pairs on `tiny` layer 2 with a learnable explanation: the final token, named."""
    from nlakit import dataset as ds
    from nlakit.extract import ExtractConfig, extract

    root = tmp_path_factory.mktemp("pairs")
    extract(
        ExtractConfig(
            model="tiny",
            layers=[2],
            corpus=str(tiny_corpus),
            out=root / "acts",
            positions_per_doc=32,
            min_position=2,
            dtype="float32",
        )
    )
    write_pairs(root / "acts", root / "explained", _token_explanation, keep=lambda r: r["token"] in FREQUENT)
    ds.split(root / "explained", root / "split", {"train": 0.8, "val": 0.2, "test": 0.0}, seed=0)
    return {"train": root / "split" / "train", "val": root / "split" / "val"}


SHORT_AV_TEMPLATE = "Vector: <concept>{injection_char}</concept>"


def sft_config(pairs, out, **kw):
    from nlakit.config import SFTConfig

    base = dict(
        data=str(pairs["train"]),
        val_data=str(pairs["val"]),
        out=str(out),
        lora=False,
        lr=1e-3,
        warmup_steps=5,
        batch_size=16,
        max_steps=200,
        eval_every=40,
        save_every=40,
        log_every=10,
        autocast="none",
        schedule="cosine",
    )
    base.update(kw)
    return SFTConfig(**base)


@pytest.fixture(scope="session")
def nla_dir(tiny_pairs, tmp_path_factory):
    """A small SFT'd NLA on `tiny` (AR and AV), shared by the SFT, NLA and RL tests."""
    from nlakit.train.sft_ar import train_ar
    from nlakit.train.sft_av import train_av

    out = tmp_path_factory.mktemp("nla")
    ar_result = train_ar(sft_config(tiny_pairs, out))
    # a short AV prompt (sidecar-driven) keeps the marker within reach of a random-init model's diffuse attention
    av_result = train_av(
        sft_config(
            tiny_pairs,
            out,
            lr=3e-3,
            max_steps=200,
            eval_every=100,
            batch_size=8,
            av_template=SHORT_AV_TEMPLATE,
            eval_fve_rows=8,
        )
    )
    return out, ar_result, av_result


def perturb_lora(model, scale: float, match: str = "lora_", seed: int = 0):
    """Give LoRA weights whose name contains `match` seeded random values (fresh adapters are a no-op: B is zero)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if match in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


# ---- the real `nla` entry point, in this process (one torch import for many calls) ----
@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def nla(capsys, monkeypatch):
    """Run `nla ARGS...` through `main`, as the console script does."""
    from nlakit.cli import main

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["nla", *args])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def assert_one_line_error(r: Result, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
