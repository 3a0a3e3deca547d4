"""One way to configure every command: `load_config` layers defaults < YAML < typed options < key=value, checks
types with one-line errors, and the CLI's extract/eval/synth/train all go through it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from nlakit.cli import main
from nlakit.config import EvalConfig, ExtractConfig, SFTConfig, SynthConfig, load_config
from nlakit.errors import NlakitError


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_precedence_defaults_yaml_values_overrides(tmp_path):
    path = _yaml(tmp_path, "data: d\nout: o\nlr: 1e-4\nbatch_size: 4\nmax_steps: 7\n")
    cfg = load_config(SFTConfig, path, ["max_steps=9"], values={"batch_size": 2, "max_steps": 8})
    assert cfg.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string: it is still a number here
    assert (cfg.batch_size, cfg.max_steps) == (2, 9)  # values beat the YAML, overrides beat both
    assert cfg.warmup_steps == SFTConfig.warmup_steps  # untouched fields keep the dataclass default


def test_override_types(tmp_path):
    cfg = load_config(ExtractConfig, None, ["model=tiny", "layers=10,15", "corpus=wiki", "out=o", "max_docs=none"])
    assert cfg.layers == [10, 15] and cfg.max_docs is None and isinstance(cfg.out, Path)
    cfg = load_config(EvalConfig, None, ["out=o", "steer_alphas=0.1,2"])
    assert cfg.steer_alphas == (0.1, 2.0)
    cfg = load_config(SynthConfig, _yaml(tmp_path, "out: s.jsonl\nregisters: [chat, code]\n"))
    assert cfg.registers == ("chat", "code") and cfg.out == Path("s.jsonl")


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "needle"),
    [
        ("data: d\nout: o\n", ["max_steps=1.5"], "'1.5' is not an integer"),
        ("data: d\nout: o\n", ["lora=maybe"], "not a boolean"),
        ("data: d\nout: o\nlora: maybe\n", [], "config key 'lora' must be bool"),
        ("data: d\nout: o\nbatch_size: [1]\n", [], "config key 'batch_size' must be int"),
        ("data: d\nout: o\nlrr: 1\n", [], "unknown config key(s) ['lrr']"),
        ("data: d\n", [], "config is missing out"),
        ("- a\n- b\n", [], "must be a mapping"),
        ("data: [unclosed\n", [], "is not readable YAML"),
        ("data: d\nout: o\n", ["nokey"], "must look like key=value"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, yaml_text, overrides, needle):
    with pytest.raises(NlakitError) as e:
        load_config(SFTConfig, _yaml(tmp_path, yaml_text), overrides)
    assert needle in str(e.value) and "\n" not in str(e.value).strip()


def _nla(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["nla", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def test_extract_cli_options_yaml_and_overrides_meet(tmp_path, monkeypatch, capsys):
    """A YAML config, one typed option and one override, through the real command on the tiny model: the sidecar
    records each from where it came, and an option left at its default does not override the YAML."""
    out = tmp_path / "acts"
    cfg = _yaml(tmp_path, f"model: tiny\nlayers: [1]\ncorpus: wiki\nout: {out}\nmax_docs: 3\nseed: 5\n")
    code, err = _nla(monkeypatch, capsys, "extract", "--config", str(cfg), "--positions-per-doc", "2", "max_tokens=64")
    assert code == 0, err
    meta = yaml.safe_load((out / "nla_meta.yaml").read_text())
    ext, extra = meta["extraction"], meta["nlakit_extraction"]
    assert ext["positions_per_doc"] == 2 and extra["max_tokens"] == 64  # the option and the override
    assert extra["seed"] == 5 and ext["corpus_slice"]["length"] == 3  # from the YAML: --seed's default did not win


def test_cli_config_errors_are_one_line(tmp_path, monkeypatch, capsys):
    code, err = _nla(monkeypatch, capsys, "extract", "--model", "tiny")
    assert code == 2 and err.startswith("error: config is missing layers, corpus, out") and err.count("\n") == 1
    code, err = _nla(monkeypatch, capsys, "eval", "--corpus", "wiki", "max_positions=many")
    assert code == 2 and "'many' is not an integer" in err and err.count("\n") == 1
    code, err = _nla(monkeypatch, capsys, "eval", "--config", str(_yaml(tmp_path, "out: r\nmax_position: 3\n")))
    assert code == 2 and "unknown config key(s) ['max_position']" in err
