"""Residual patching and steering on the real `tiny` model: exactness, causality, and the one-line errors."""

from __future__ import annotations

import pytest
import torch

from nlakit.errors import NlakitError
from nlakit.models import load_causal_lm, load_tokenizer
from nlakit.steer import Edit, ResidualPatch, kl_divergence, match_norm, next_token_logprobs

LAYER = 2


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm("tiny", dtype="float32"), load_tokenizer("tiny")


def _ids(tok):
    return tok("The quick brown fox jumps over the lazy dog and keeps running far away")["input_ids"]


def _hidden(model, ids, layer=LAYER):
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0], out.logits[0]


def test_patching_a_vector_with_itself_changes_nothing(lm):
    model, tok = lm
    ids = _ids(tok)
    h, _ = _hidden(model, ids)
    pos = [3, 7, len(ids) - 1]
    plain = next_token_logprobs(model, ids, pos, LAYER)
    same = next_token_logprobs(model, ids, pos, LAYER, h[pos])
    assert torch.allclose(plain, same, atol=1e-5)
    assert float(kl_divergence(plain, same).abs().max()) < 1e-4


def test_a_patch_changes_its_position_and_later_ones_only(lm):
    model, tok = lm
    ids = _ids(tok)
    _, logits = _hidden(model, ids)
    delta = torch.randn(model.config.hidden_size) * 50
    with ResidualPatch(model, LAYER, [Edit(0, 5, delta, "add")]):
        patched = model(input_ids=torch.tensor([ids])).logits[0]
    assert torch.allclose(patched[:5], logits[:5], atol=1e-5)  # causal: earlier positions untouched
    assert not torch.allclose(patched[5], logits[5], atol=1e-3)
    assert not torch.allclose(patched[-1], logits[-1], atol=1e-3)


def test_the_patch_acts_on_the_prompt_pass_only(lm):
    model, tok = lm
    ids = torch.tensor([_ids(tok)[:6]])
    delta = torch.randn(model.config.hidden_size) * 50
    with ResidualPatch(model, LAYER, [Edit(0, 0, delta, "add")]) as patch:
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
        assert patch._used
    # the hook is gone afterwards
    h_after, _ = _hidden(model, ids[0].tolist())
    h_plain = model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
    assert torch.equal(h_after, h_plain)


def test_match_norm_and_bad_edits(lm):
    v = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    like = torch.tensor([[0.0, 10.0], [0.0, 2.0]])
    assert torch.allclose(match_norm(v, like).norm(dim=-1), torch.tensor([10.0, 2.0]))
    model, tok = lm
    with pytest.raises(NlakitError, match="mode"):
        ResidualPatch(model, LAYER, [Edit(0, 0, torch.zeros(4), "scale")])
    with pytest.raises(NlakitError, match="past the input"):
        with ResidualPatch(model, LAYER, [Edit(0, 99, torch.zeros(model.config.hidden_size))]):
            model(input_ids=torch.tensor([_ids(tok)[:5]]))


def test_steer_end_to_end(nla_dir):
    from nlakit.nla import NLA
    from nlakit.steer import steer

    nla = NLA.from_pretrained(nla_dir[0], dtype="float32")
    r0 = steer(
        nla, "The cat sat on the mat and", "The text ends with the token 'and'.", "The text ends with the token 'and'."
    )
    assert r0.delta_norm == 0 and r0.steered == r0.original  # no edit, no change
    r = steer(nla, "The cat sat on the mat and", "the token 'and'", "the token 'period'", alpha=20.0, max_new_tokens=8)
    assert r.delta_norm > 0 and r.position == len(nla.activations("The cat sat on the mat and")[0]) - 1
    assert r.steered != r.original  # a large push at the last position changes the greedy continuation
    with pytest.raises(NlakitError, match="non-empty"):
        steer(nla, "Some text", "", "edited")
    with pytest.raises(NlakitError, match="outside"):
        steer(nla, "Some text", "a", "b", position=50)
