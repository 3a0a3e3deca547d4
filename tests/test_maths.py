from __future__ import annotations

import math

import pytest
import torch

from nlakit.maths import (
    best_of_curve,
    cosine,
    fve_nrm,
    meannorm_baseline,
    mse_nrm,
    normalize,
    paired_bootstrap,
    rawvar_baseline,
)


def test_normalize_hand_values():
    v = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = normalize(v, 10.0)
    assert out.tolist() == [[6.0, 8.0], [0.0, 0.0]]  # zero rows stay zero
    assert normalize(v, None) is v


def test_mse_nrm_is_two_one_minus_cos():
    a = torch.tensor([[1.0, 0.0]])
    assert mse_nrm(a, torch.tensor([[0.0, 5.0]])).item() == pytest.approx(2.0)  # orthogonal
    assert mse_nrm(a, torch.tensor([[7.0, 0.0]])).item() == pytest.approx(0.0)  # same direction, other norm
    assert mse_nrm(a, torch.tensor([[-2.0, 0.0]])).item() == pytest.approx(4.0)  # opposite
    # 45 degrees: both at norm sqrt(2) -> (1,1)/1 vs (sqrt2,0): diff (sqrt2-1, -1)... = 2(1-cos45)
    assert mse_nrm(a, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(2 * (1 - math.cos(math.pi / 4)))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 37, generator=g), torch.randn(16, 37, generator=g)
    torch.testing.assert_close(mse_nrm(x, y), 2 * (1 - cosine(x, y)), atol=1e-5, rtol=0)


def test_cosine_hand_values():
    assert cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item() == pytest.approx(1 / math.sqrt(2))
    assert cosine(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item() == 0.0


def test_baselines_hand_values():
    # two unit-direction vectors e1, e2 in d=2; normalised to sqrt(2): (sqrt2, 0), (0, sqrt2); mean (s/2, s/2)
    v = torch.tensor([[5.0, 0.0], [0.0, 3.0]])
    # rawvar = mean over elements of (v - mu)^2 = (s/2)^2 = 0.5 ; equals 1 - |mu|^2/d = 1 - 1/2
    assert rawvar_baseline(v) == pytest.approx(0.5)
    # meannorm: predict mean direction (1,1)/sqrt2 -> cos 1/sqrt2 with each -> 2(1 - 1/sqrt2)
    assert meannorm_baseline(v) == pytest.approx(2 * (1 - 1 / math.sqrt(2)))


def test_fve():
    assert fve_nrm(0.25, 0.5) == pytest.approx(0.5)
    assert fve_nrm(1.0, 0.5) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        fve_nrm(0.1, 0.0)


def test_best_of_curve_hand_values():
    mse = torch.tensor([[0.6, 0.2, 0.4], [0.3, 0.5, 0.1]])
    assert best_of_curve(mse, [1, 2, 3, 8]) == pytest.approx({1: 0.45, 2: 0.25, 3: 0.15})


def test_paired_bootstrap_resamples_documents():
    a = torch.tensor([0.1, 0.1, 0.3, 0.3])
    b = torch.tensor([0.2, 0.2, 0.3, 0.3])
    # doc x gains 0.1 / rawvar 0.5 = 0.2 on both rows, doc y gains 0: mean 0.1; a draw has 0, 1 or 2 copies of x
    gain, lo, hi = paired_bootstrap(a, b, ["x", "x", "y", "y"], rawvar=0.5, n_boot=400)
    assert gain == pytest.approx(0.1)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.2)
    same = paired_bootstrap(a, a, ["x", "x", "y", "y"], rawvar=0.5)
    assert same == pytest.approx((0.0, 0.0, 0.0))


@pytest.mark.parametrize("chunk_elements", [7 * 50, 1 << 22])  # 7 rows a chunk (uneven), and all rows at once
def test_head_logprobs_equal_log_softmax_with_gradients(chunk_elements):
    """The chunked head recomputes logits in backward; values and gradients (hidden and head) equal the plain
    log-softmax over the whole [N, V] logits."""
    from nlakit.maths import head_logprobs

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(20, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    target = torch.randint(0, 50, (20,), generator=gen)
    upstream = torch.randn(20, generator=gen)
    logp, entropy = head_logprobs(hidden, weight, target, with_entropy=True, chunk_elements=chunk_elements)
    (logp * upstream).sum().backward()
    ours = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = torch.log_softmax(hidden @ weight.T, -1)
    (full.gather(-1, target[:, None])[:, 0] * upstream).sum().backward()
    torch.testing.assert_close(logp, full.gather(-1, target[:, None])[:, 0].detach())
    torch.testing.assert_close(entropy, -(full.exp() * full).sum(-1).detach())
    torch.testing.assert_close(ours[0], hidden.grad)
    torch.testing.assert_close(ours[1], weight.grad)
    assert not entropy.requires_grad
