from __future__ import annotations

import pytest
import torch

from nlakit.av import AV
from nlakit.generation import SamplingConfig, fast_generate, hf_generate, sample_next


@pytest.fixture(scope="module")
def av() -> AV:
    return AV.from_base("tiny", layer=2, injection_scale=1.0, dtype="float32")


def _run(av: AV, generator, vectors, cfg):
    av.generator = generator
    return av.generate_ids(vectors, cfg)


def test_fast_greedy_equals_hf_generate(av):
    vectors = torch.randn(5, 64, generator=torch.Generator().manual_seed(0)) * 3
    cfg = SamplingConfig(max_new_tokens=20)
    fast, ref = _run(av, fast_generate, vectors, cfg), _run(av, hf_generate, vectors, cfg)
    width = min(fast.shape[1], ref.shape[1])
    assert torch.equal(fast[:, :width], ref[:, :width])
    av.check_injection()  # and the vectors do reach the model


def test_min_new_tokens_and_eos_padding(av):
    vectors = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    out = _run(av, fast_generate, vectors, SamplingConfig(max_new_tokens=12, min_new_tokens=12))
    assert out.shape == (3, 12)
    assert not torch.isin(out, torch.tensor(av.eos_ids)).any()


def test_sampling_is_seeded(av):
    vectors = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    assert torch.equal(_run(av, fast_generate, vectors, cfg), _run(av, fast_generate, vectors, cfg))


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    cfg = SamplingConfig(temperature=1.0, top_p=0.7)
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, cfg, g)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(sample_next(logits, SamplingConfig(), None)) == 0
