from __future__ import annotations

import pytest
import torch

from nlakit.errors import NlakitError
from nlakit.injection import (
    check_tokens,
    check_vectors,
    find_marker,
    inject,
    marker_positions,
    render_av_prompt,
)
from nlakit.meta import AV_TEMPLATE, Tokens
from nlakit.models import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def tokens(tok) -> Tokens:
    return find_marker(tok, AV_TEMPLATE)


def test_marker_is_one_token_once_with_neighbours(tok, tokens):
    assert tok.encode(tokens.injection_char, add_special_tokens=False) == [tokens.injection_token_id]
    ids = render_av_prompt(tok, AV_TEMPLATE, tokens.injection_char)
    p = ids.index(tokens.injection_token_id)
    assert ids.count(tokens.injection_token_id) == 1
    assert (ids[p - 1], ids[p + 1]) == (tokens.injection_left_neighbor_id, tokens.injection_right_neighbor_id)
    assert tok.decode([ids[p - 1]]).endswith(">") and tok.decode([ids[p + 1]]).startswith("</")
    # byte-level BPE: nothing in U+3200-U+33FF is one token, so the fallback picks a rare Latin-1 symbol
    assert not 0x3200 <= ord(tokens.injection_char) < 0x3400
    check_tokens(tok, tokens, AV_TEMPLATE)


def test_sidecar_that_disagrees_with_tokenizer(tok, tokens):
    from dataclasses import replace

    with pytest.raises(NlakitError, match="another tokenizer"):
        check_tokens(tok, replace(tokens, injection_token_id=tokens.injection_token_id + 1), AV_TEMPLATE)
    with pytest.raises(NlakitError, match="neighbours"):
        check_tokens(tok, replace(tokens, injection_left_neighbor_id=7), AV_TEMPLATE)


def _padded(tok, tokens, side: str, extra: list[list[int]]):
    prompt = render_av_prompt(tok, AV_TEMPLATE, tokens.injection_char)
    seqs = [prompt + e for e in extra]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask, prompt.index(tokens.injection_token_id)


@pytest.mark.parametrize("side", ["left", "right"])
def test_injection_lands_exactly_on_marker(tok, tokens, side):
    # the third row's "response" itself contains the marker between its neighbours: only the prompt's counts
    trap = tok.encode("<concept>" + tokens.injection_char + "</concept>", add_special_tokens=False)
    ids, mask, p = _padded(tok, tokens, side, [[], tok.encode(" hello there friend"), trap])
    pos = marker_positions(ids, mask, tokens)
    offsets = (mask.shape[1] - mask.sum(1)) if side == "left" else torch.zeros(3, dtype=torch.long)
    assert pos.tolist() == (offsets + p).tolist()
    emb = torch.randn(*ids.shape, 16)
    vec = torch.randn(3, 16)
    out = inject(emb, pos, vec, scale=5.0)
    changed = (out != emb).any(-1)
    assert changed.sum() == 3 and all(changed[i, pos[i]] for i in range(3))
    torch.testing.assert_close(out[torch.arange(3), pos].norm(dim=-1), torch.full((3,), 5.0))
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(out[torch.arange(3), pos], vec), torch.ones(3))


def test_missing_marker_is_an_error(tok, tokens):
    ids = torch.tensor([tok.encode("no marker here at all", add_special_tokens=False)])
    with pytest.raises(NlakitError, match="no marker"):
        marker_positions(ids, torch.ones_like(ids), tokens)


def test_bad_vectors():
    with pytest.raises(NlakitError, match="shape"):
        check_vectors(torch.randn(2, 5), 4)
    with pytest.raises(NlakitError, match="NaN"):
        check_vectors(torch.tensor([[1.0, float("nan")]]), 2)
    with pytest.raises(NlakitError, match="all zeros"):
        check_vectors(torch.zeros(1, 2), 2)
    assert check_vectors(torch.ones(3), 3).shape == (1, 3)
