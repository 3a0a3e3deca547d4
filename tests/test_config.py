"""One way to configure every command: `load_config` layers defaults < YAML < typed options < key=value, checks
types with one-line errors, and the CLI's extract/eval/synth/train all go through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line_error
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


def test_extract_cli_options_yaml_and_overrides_meet(tmp_path, nla):
    """A YAML config, one typed option and one override, through the real command on the tiny model: the sidecar
    records each from where it came, and an option left at its default does not override the YAML."""
    out = tmp_path / "acts"
    cfg = _yaml(tmp_path, f"model: tiny\nlayers: [1]\ncorpus: wiki\nout: {out}\nmax_docs: 3\nseed: 5\n")
    r = nla("extract", "--config", str(cfg), "--positions-per-doc", "2", "max_tokens=64")
    assert r.returncode == 0, r.stderr
    meta = yaml.safe_load((out / "nla_meta.yaml").read_text())
    ext, extra = meta["extraction"], meta["nlakit_extraction"]
    assert ext["positions_per_doc"] == 2 and extra["max_tokens"] == 64  # the option and the override
    assert extra["seed"] == 5 and ext["corpus_slice"]["length"] == 3  # from the YAML: --seed's default did not win


def test_cli_config_errors_are_one_line(tmp_path, nla):
    assert_one_line_error(nla("extract", "--model", "tiny"), "error: config is missing layers, corpus, out")
    assert_one_line_error(nla("eval", "--corpus", "wiki", "max_positions=many"), "'many' is not an integer")
    bad = _yaml(tmp_path, "out: r\nmax_position: 3\n")
    assert_one_line_error(nla("eval", "--config", str(bad)), "unknown config key(s) ['max_position']")


MODEL_COMMANDS = ("explain", "demo", "verbalize", "reconstruct", "serve", "eval")


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_takes_the_shared_options_and_a_config(nla, command):
    r = nla(command, "-h")
    assert r.returncode == 0
    for option in ("--nla", "--device", "--dtype", "--config"):
        assert option in r.stdout, (command, option)
    if command in ("explain", "demo", "verbalize", "eval"):
        assert "--max-new-tokens" in r.stdout and ("--temperature" in r.stdout or command == "eval")


@pytest.mark.parametrize(
    ("args", "yaml_text", "needle"),
    [
        (["explain", "hi"], "temperature: -1\n", "temperature must be a number 0 or more"),
        (["explain", "hi"], "positions: [1, x]\n", "config key 'positions[1]': 'x' is not an integer"),
        (["demo"], "max_new_tokens: 0\n", "max_new_tokens must be a number 1 or more"),
        (["verbalize", "."], "n: 0\n", "n must be a number 1 or more"),
        (["reconstruct", "a cat"], "rawvar: -2\n", "rawvar must be a number 0 or more"),
        (["serve"], "port: 70000\n", "port must be 1..65535"),
        (["serve"], "max_waiting: -1\n", "max_waiting must be a number 0 or more"),
        (["explain", "hi"], "nla: /nonexistent/x\ndtype: int3\n", "int3"),
        (["explain", "hi"], "device: gpu\n", "'gpu' is not a device"),
        (["explain", "hi"], "positions: []\n", "positions is empty"),
        (["eval", "--corpus", "wiki"], "out: r\nsteer_alphas: []\n", "steer_alphas must be one or more"),
        (["eval", "--corpus", "wiki"], "out: r\nsteer_cases: [a, b]\n", "each case is [prompt, word]"),
    ],
)
def test_a_bad_config_value_is_one_line_before_a_model_loads(tmp_path, nla, args, yaml_text, needle):
    cfg = _yaml(tmp_path, "nla: /nonexistent/nla\n" + yaml_text if not yaml_text.startswith("nla:") else yaml_text)
    assert_one_line_error(nla(*args, "--config", str(cfg)), needle)


def test_explain_from_a_yaml_config_equals_the_options(tmp_path, nla, nla_dir):
    """The same explain through options, and through a YAML config plus a key=value override: the same rows."""
    by_options = tmp_path / "a.json"
    r = nla(
        "explain",
        "The cat sat on the mat.",
        "--nla",
        str(nla_dir[0]),
        "--dtype",
        "float32",
        "--positions",
        "2,4",
        "--max-new-tokens",
        "6",
        "--json",
        str(by_options),
    )
    assert r.returncode == 0, r.stderr
    cfg = _yaml(tmp_path, f"nla: {nla_dir[0]}\ndtype: float32\npositions: [2, 4]\nmax_new_tokens: 9\n")
    by_config = tmp_path / "b.json"
    r = nla("explain", "The cat sat on the mat.", "--config", str(cfg), "--json", str(by_config), "max_new_tokens=6")
    assert r.returncode == 0, r.stderr
    a, b = (json.loads(p.read_text(encoding="utf-8"))["tokens"] for p in (by_options, by_config))
    assert [t["position"] for t in a] == [2, 4]
    assert [(t["position"], t["explanation"]) for t in a] == [(t["position"], t["explanation"]) for t in b]


def test_explain_precedence_yaml_typed_option_override(tmp_path, nla, monkeypatch):
    """The config explain builds (captured where it would load the NLA): an override beats a typed option, a typed
    option beats the YAML, and an option left at its default does not override the YAML."""
    from nlakit.nla import NLA

    seen = []

    def capture(cls, cfg):
        seen.append(cfg)
        raise NlakitError("captured")

    monkeypatch.setattr(NLA, "from_config", classmethod(capture))
    cfg = _yaml(tmp_path, "nla: somewhere\ntemperature: 0.5\nmax_new_tokens: 9\ndtype: float32\n")
    assert_one_line_error(
        nla("explain", "hi", "--config", str(cfg), "--max-new-tokens", "7", "max_new_tokens=6"), "captured"
    )
    assert (seen[-1].max_new_tokens, seen[-1].temperature, seen[-1].nla) == (6, 0.5, "somewhere")
    assert_one_line_error(
        nla("explain", "hi", "--config", str(cfg), "--temperature", "0.2", "--positions", "2,3"), "captured"
    )
    assert (seen[-1].max_new_tokens, seen[-1].temperature, seen[-1].positions) == (9, 0.2, [2, 3])
    cfg = _yaml(tmp_path, "nla: somewhere\ndtype: float32\nport: 8001\n")  # serve's own fields only
    assert_one_line_error(nla("serve", "--config", str(cfg), "--port", "8123", "max_waiting=0"), "captured")
    assert (seen[-1].port, seen[-1].max_waiting, seen[-1].host, seen[-1].dtype) == (8123, 0, "127.0.0.1", "float32")
