"""The README's training walkthrough runs as written, in order, on `tiny`: the docs cannot drift from the code.

The commands are read from README.md between the `walkthrough:begin` and `walkthrough:end` markers. Each runs through
the real entry point with the options in `TEST_SIZE` appended: for an option given twice the last value wins, and so
does the last `key=value` override of a recipe, so the README's own command runs, at test size, on `tiny`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"

# Appended to the README's commands by subcommand: the `tiny` model (its layer 2 of 4) and sizes that run in seconds.
TEST_SIZE = {
    "extract": "--model tiny --layer 2 --max-docs 16 --positions-per-doc 4 --min-position 2 --dtype float32",
    "datagen": "",
    "split": "",
    "train ar": "max_steps=4 batch_size=4 eval_every=2 save_every=2 log_every=1 eval_rows=8 warmup_steps=1",
    "train av": "max_steps=4 batch_size=4 eval_every=2 save_every=2 log_every=1 eval_rows=8 warmup_steps=1",
    "train rl": "max_steps=2 group_size=2 prompts_per_step=2 max_new_tokens=8 save_every=2 eval_every=100",
    "explain": "--max-new-tokens 8 --dtype float32 --json explain.json",
}


def walkthrough() -> list[list[str]]:
    """The README's walkthrough commands, each as argv after `nla` (comments and blank lines dropped)."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- walkthrough:begin -->\s*```bash\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S)
    assert block, "README.md has no walkthrough block between the walkthrough:begin/end markers"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert all(c[0] == "nla" for c in commands), commands
    return [c[1:] for c in commands]


def run_nla(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "nlakit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},  # rich tables fold words to the width: keep them whole for the asserts
    )
    assert r.returncode == 0, (args, r.stdout[-3000:], r.stderr[-3000:])
    return r


@pytest.fixture(scope="module")
def walked(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    cwd = tmp_path_factory.mktemp("readme")
    outputs = {}
    for args in walkthrough():
        name = " ".join(args[:2]) if args[0] == "train" else args[0]
        assert name in TEST_SIZE, f"README runs `nla {name}`; give it a test size in TEST_SIZE"
        outputs[name] = run_nla(args + shlex.split(TEST_SIZE[name]), cwd)
    return cwd, outputs


def test_walkthrough_order_and_coverage():
    order = [" ".join(a[:2]) if a[0] == "train" else a[0] for a in walkthrough()]
    # the pipeline the README promises, in this order: datagen before split (see the README for why)
    assert order == ["extract", "datagen", "split", "train ar", "train av", "train rl", "explain"]


def test_readme_walkthrough_runs(walked):
    cwd, out = walked
    assert (cwd / "runs" / "pairs" / "train").is_dir() and (cwd / "runs" / "pairs" / "val").is_dir()
    for role in ("av", "ar"):
        assert (cwd / "runs" / "nla" / role / "nla_meta.yaml").is_file()
        assert (cwd / "runs" / "nla_rl" / role / "nla_meta.yaml").is_file()
    # the table's layout follows the terminal; the JSON the same command wrote is what we read
    payload = json.loads((cwd / "explain.json").read_text(encoding="utf-8"))
    rows = payload["tokens"] if isinstance(payload, dict) else payload
    assert rows and all("explanation" in r for r in rows)
    assert "Eiffel" in "".join(r["token"] for r in rows) or "Eiffel" in out["explain"].stdout


def test_marker_character_in_text_is_harmless(walked):
    """The AV's marker (`¬` for SmolLM2's tokenizer) in the user's text is ordinary text: only the marker between its
    recorded neighbours in the AV prompt is injected, and the explained text never enters the AV prompt."""
    cwd, _ = walked
    run_nla(["explain", "cost ¬ price", "--nla", "runs/nla_rl", *shlex.split(TEST_SIZE["explain"])], cwd)
    payload = json.loads((cwd / "explain.json").read_text(encoding="utf-8"))
    # explained like any text: the marker's bytes are ordinary tokens of it (a byte-level BPE splits "¬" in two)
    assert payload["text"] == "cost ¬ price" and len(payload["tokens"]) >= 3
