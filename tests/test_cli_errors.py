"""Every bad input through the real `nla` entry point (`nlakit.cli.main`): one `error:` line on stderr and exit
status 2, decided before any model loads; `--version` and `-h` exit 0. Most cases call `main` in this process (one
import of torch for all of them); `test_console_script` runs it as a subprocess, as a user's shell does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Result, assert_one_line_error
from nlakit import __version__

MISSING = "/nonexistent/nlakit-test"


def test_console_script():
    """The installed entry point, in a subprocess: the version, and one usage mistake as one line."""
    run = [sys.executable, "-m", "nlakit"]
    r = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == f"nlakit {__version__}", r
    r = subprocess.run([*run, "foo"], capture_output=True, text=True, timeout=300)
    assert_one_line_error(Result(r.returncode, r.stdout, r.stderr), "No such command 'foo'", "nla -h")


def test_model_commands_print_no_known_library_warnings(nla_dir):
    """A real model command (the AR is a LoRA adapter: peft reads the deprecated property there) writes only its
    result, and stderr no notice: transformers' and peft's known notices are filtered by `nlakit._warnings`."""
    cmd = [sys.executable, "-m", "nlakit", "reconstruct", "a cat sat", "--nla", str(nla_dir[0]), "--dtype", "float32"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "norm=" in r.stdout, r.stderr[-2000:]
    assert "Warning" not in r.stderr and "deprecat" not in r.stderr.lower(), r.stderr


def test_the_warning_filter_is_precise():
    """Only the exact known message is hidden: another FutureWarning, even about the same property, still shows."""
    code = (
        "import warnings, nlakit\n"
        "warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed in v6. "
        "Use `is_activation_checkpointing` instead.', FutureWarning)\n"
        "warnings.warn('`is_gradient_checkpointing` now means something new', FutureWarning)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "now means something new" in r.stderr and "removed in v6" not in r.stderr


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    txt = root / "latin1.txt"
    txt.write_bytes(b"first document\n\ncaf\xe9 au lait\n")  # Latin-1 e-acute at byte 19
    jsonl = root / "broken.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "b\xc3("}\n')  # a cut UTF-8 sequence at byte 28
    return {"txt": txt, "jsonl": jsonl, "root": root}


def test_version_and_help(nla):
    r = nla("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"nlakit {__version__}", r
    for args in (["-h"], ["--help"], ["explain", "-h"], ["train", "rl", "-h"]):
        r = nla(*args)
        assert r.returncode == 0 and "Usage" in r.stdout and r.stderr == "", (args, r.stderr)
    r = nla()  # no command: the help, not an error
    assert r.returncode == 0 and "explain" in r.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["foo"], ["No such command 'foo'", "nla -h"]),
        (["explain"], ["Missing argument", "nla explain -h"]),
        (["explain", "hi", "--no-such-option"], ["--no-such-option"]),
        (["explain", "hi", "--dtype", "int3"], ["--dtype", "int3"]),
        (["explain", "hi", "--device", "tpu9"], ["--device"]),
        (["explain", "hi", "--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["explain", "hi", "--temperature", "-1"], ["--temperature"]),
        (["explain", "hi", "--positions", "3,x"], ["--positions"]),
        (["verbalize", MISSING, "--n", "0"], ["--n"]),
        (["export", MISSING, "out", "--storage-dtype", "int8"], ["--storage-dtype"]),
        (["split", MISSING, "--out", "x"], ["does not exist"]),
        (["train", "ar", "--config", MISSING + ".yaml"], ["--config", "does not exist"]),
        (["train", "ar", "lr"], ["key=value"]),
        (["train", "ar", "no_such_key=1"], ["unknown config key 'no_such_key'"]),
        (["train", "frobnicate"], ["No such command"]),
        (
            ["train", "rl", f"data={MISSING}", f"nla={MISSING}", f"out={MISSING}", "rollout_dtype=int3"],
            ["rollout_dtype", "int3"],
        ),
    ],
)
def test_usage_mistakes(nla, args, needles):
    assert_one_line_error(nla(*args), *needles)


def test_bad_text_is_refused_before_anything_loads(nla):
    # the NLA path does not exist either: the text check must come first (no folder read, no model loaded)
    for text in ("", "   \n\t"):
        assert_one_line_error(nla("explain", text, "--nla", MISSING), "text is empty")
        assert_one_line_error(nla("reconstruct", text, "--nla", MISSING), "explanation is empty")
    assert_one_line_error(nla("explain", "hi", "--nla", MISSING), "no NLA at", MISSING)


def test_bad_steering_strengths(nla, tmp_path):
    assert_one_line_error(
        nla("eval", "--out", str(tmp_path / "r"), "--corpus", "wiki", "--steer-alphas", "big"), "numbers"
    )


def test_best_of_needs_an_nla(nla, tmp_path, tiny_pairs):
    out = tmp_path / "o"
    assert_one_line_error(
        nla("datagen", str(tiny_pairs["train"]), "--out", str(out), "--best-of", "4"), "--provider nla"
    )
    assert not out.exists()  # refused before anything is written
    assert_one_line_error(nla("explain", "some text", "--best-of", "0"), "best-of")


def test_missing_files(nla, tmp_path):
    assert_one_line_error(nla("verbalize", MISSING), "does not exist")
    assert_one_line_error(nla("datagen", MISSING, "--out", str(tmp_path / "o")), "does not exist")
    assert_one_line_error(nla("eval", "--out", str(tmp_path / "r"), "--texts", MISSING + ".txt"), "does not exist")
    corpus = MISSING + ".txt"
    assert_one_line_error(
        nla("extract", "--model", "tiny", "--layer", "1", "--corpus", corpus, "--out", str(tmp_path / "x")), corpus
    )


def test_undecodable_files_name_the_file_and_byte(nla, bad_files, tmp_path):
    for kind, offset in (("txt", 19), ("jsonl", 28)):
        path = str(bad_files[kind])
        r = nla("extract", "--model", "tiny", "--layer", "1", "--corpus", path, "--out", str(tmp_path / kind))
        assert_one_line_error(r, path, f"offset {offset}", "UTF-8")
        r = nla("eval", "--out", str(tmp_path / f"report_{kind}"), "--texts", path)
        assert_one_line_error(r, path, f"offset {offset}", "UTF-8")
    assert not (tmp_path / "txt").exists()  # refused before any output was written
