"""Files nlakit writes get the user's umask (0666 & ~umask), whoever writes them underneath: our atomic writes use
mkstemp (0600) and safetensors writes 0600 whatever the umask, so both are put right."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from nlakit.io import atomic_write_text, current_umask


def _modes(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): stat.S_IMODE(f.stat().st_mode) for f in root.rglob("*") if f.is_file()}


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o640
    finally:
        os.umask(old)


def test_model_saves_checkpoints_and_exports_follow_the_umask(nla_dir, tmp_path, umask_027):
    from nlakit.nla import NLA, export
    from nlakit.train.loop import save_checkpoint

    src = nla_dir[0]
    nla = NLA.from_pretrained(src, dtype="float32")
    nla.save_pretrained(tmp_path / "saved")
    export(src, tmp_path / "exported")
    export(src, tmp_path / "merged", dtype="float32", merge=True)
    head = torch.nn.Linear(4, 4)
    save_checkpoint(
        tmp_path / "run",
        1,
        head,
        torch.optim.SGD(head.parameters(), lr=0.1),
        torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(head.parameters(), lr=0.1), lambda s: 1.0),
    )
    atomic_write_text(tmp_path / "note.txt", "x")
    modes = _modes(tmp_path)
    assert any(name.endswith(".safetensors") for name in modes)  # the files safetensors writes are among them
    assert {name: oct(m) for name, m in modes.items() if m != umask_027} == {}


def test_training_output_is_readable_under_the_usual_umask(nla_dir):
    """The shared SFT run (written under the test process's umask) has no private file left behind."""
    want = 0o666 & ~current_umask()
    assert {n: oct(m) for n, m in _modes(nla_dir[0]).items() if m != want} == {}
