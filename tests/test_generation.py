from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from conftest import perturb_lora
from nlakit import generation
from nlakit.av import AV
from nlakit.generation import (
    SamplingConfig,
    fast_generate,
    hf_generate,
    matmul_attention_forward,
    merged_lora,
    packed_linears,
    sample_next,
)
from nlakit.meta import ModelMeta

TINY_AV_META = ModelMeta("av", 64, 2, 1.0, 8.0, base_checkpoint="tiny", target="tiny")  # d=64, K=2, scale 1


@pytest.fixture(scope="module")
def av() -> AV:
    return AV.from_base("tiny", TINY_AV_META, dtype="float32")


@pytest.fixture(scope="module")
def lora_av() -> AV:
    """The tiny AV under LoRA adapters with non-zero weights (fresh ones are a no-op: B starts at zero)."""
    from nlakit.train.loop import add_lora

    av = AV.from_base("tiny", TINY_AV_META, dtype="float32")
    av.model = perturb_lora(add_lora(av.model, 8, 16, task_type="CAUSAL_LM"), 0.1)
    return av


def _run(av: AV, generator, vectors, cfg):
    av.generator = generator
    return av.generate_ids(vectors, cfg)


def _assert_same_greedy(fast, ref):
    width = min(fast.shape[1], ref.shape[1])
    assert width > 0
    assert torch.equal(fast[:, :width], ref[:, :width])


def test_fast_greedy_equals_hf_generate(av):
    vectors = torch.randn(5, 64, generator=torch.Generator().manual_seed(0)) * 3
    cfg = SamplingConfig(max_new_tokens=20)
    _assert_same_greedy(_run(av, fast_generate, vectors, cfg), _run(av, hf_generate, vectors, cfg))
    assert av.model.config._attn_implementation == "sdpa"  # the decode attention is switched in only while decoding
    av.check_injection()  # and the vectors do reach the model


def test_fast_greedy_with_lora_merged_equals_unmerged_hf_generate(lora_av):
    vectors = torch.randn(5, 64, generator=torch.Generator().manual_seed(3)) * 3
    cfg = SamplingConfig(max_new_tokens=20)
    before = {n: p.detach().clone() for n, p in lora_av.model.named_parameters()}
    fast = _run(lora_av, fast_generate, vectors, cfg)
    _assert_same_greedy(fast, _run(lora_av, hf_generate, vectors, cfg))
    # the adapters are unmerged again and every weight is bit-identical, so training goes on exactly
    for n, p in lora_av.model.named_parameters():
        assert torch.equal(p, before[n]), n
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(m.merged for m in lora_av.model.modules() if isinstance(m, BaseTunerLayer))


def test_decoding_on_a_bf16_copy_equals_a_bf16_model_and_leaves_the_weights(lora_av):
    """`generate_ids(dtype=bf16)` (RL's rollouts on fp32 weights) decodes exactly as a model merged in fp32 and then
    cast to bf16 would; the fp32 weights and the unmerged adapters are bit-identical afterwards."""
    import copy

    vectors = torch.randn(5, 64, generator=torch.Generator().manual_seed(4)) * 3
    cfg = SamplingConfig(max_new_tokens=16)
    before = {n: p.detach().clone() for n, p in lora_av.model.named_parameters()}
    lora_av.generator = fast_generate
    ours = lora_av.generate_ids(vectors, cfg, torch.bfloat16)
    twin = copy.copy(lora_av)
    twin.model = copy.deepcopy(lora_av.model).merge_and_unload()
    for p in twin.model.parameters():  # as a bf16 load from disk: the rotary buffers stay fp32
        p.data = p.data.to(torch.bfloat16)
    _assert_same_greedy(ours, twin.generate_ids(vectors, cfg))
    for n, p in lora_av.model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not any(m.merged for m in lora_av.model.modules() if isinstance(m, BaseTunerLayer))


@pytest.mark.parametrize("grouped", [False, True])
def test_token_logprobs_with_a_shared_prefix_equal_a_full_forward(lora_av, grouped):
    """`token_logprobs` runs the prompt before the marker once and lets every row read it, and the rest of the
    prompt once per distinct vector (RL's groups); log-probs and LoRA gradients equal a plain forward over every
    row's whole sequence."""
    vectors = torch.randn(4, 64, generator=torch.Generator().manual_seed(5)) * 3
    if grouped:
        vectors = vectors[[0, 0, 1, 1]]
    ids, mask, labels = lora_av.batch(["a b c", "word", "a longer explanation of it", "x"])
    marker = lora_av.prompt_ids.index(lora_av.meta.tokens.injection_token_id)
    assert marker > 0  # there is a prefix to share
    params = [p for p in lora_av.model.parameters() if p.requires_grad]
    assert lora_av._plain_head()  # the head is a plain (tied) matrix: log-probs go through head_logprobs
    # the decoder's first layer sees each shared piece once: count the positions it runs
    seen = []
    layer = lora_av.model.get_base_model().model.layers[0]

    def count(_, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.shape[0] * hidden.shape[1])

    hook = layer.register_forward_pre_hook(count, with_kwargs=True)
    try:
        lora_av.token_logprobs(vectors, ids, mask, labels)
    finally:
        hook.remove()
    p, t = len(lora_av.prompt_ids), ids.shape[1]
    assert sum(seen) == (marker + 2 * (p - marker) + 4 * (t - p) if grouped else marker + 4 * (t - marker))

    def grads(logp):
        lora_av.model.zero_grad()
        logp.sum().backward()
        return [p.grad.clone() for p in params]

    ours = lora_av.token_logprobs(vectors, ids, mask, labels)
    p = len(lora_av.prompt_ids)
    logits = lora_av.model(inputs_embeds=lora_av.embed(ids, mask, vectors), attention_mask=mask).logits
    target = labels[:, p:]
    full = torch.log_softmax(logits[:, p - 1 : -1].float(), -1).gather(-1, target.clamp_min(0)[..., None])[..., 0]
    full = full * (target != -100)
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(ours), grads(full), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the logged entropy (from the same logsumexp) is each next-token distribution's entropy, 0 at padding
    _, entropy = lora_av.token_logprobs(vectors, ids, mask, labels, with_entropy=True)
    expected = torch.distributions.Categorical(logits=logits[:, p - 1 : -1].float().detach()).entropy()
    torch.testing.assert_close(entropy, expected * (target != -100), atol=1e-4, rtol=1e-4)
    assert float(entropy.max()) > 0.1
    # the whole-LM path (heads with a bias, softcapping or adapters take it) gives the same
    lora_av._head_is_plain = (lora_av.model, False)
    try:
        whole, whole_entropy = lora_av.token_logprobs(vectors, ids, mask, labels, with_entropy=True)
        torch.testing.assert_close(whole, ours.detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(whole_entropy, entropy, atol=1e-4, rtol=1e-4)
    finally:
        lora_av._head_is_plain = None


def test_merged_lora_changes_nothing_without_adapters(av):
    before = [p.data_ptr() for p in av.model.parameters()]
    with merged_lora(av.model):
        pass
    assert [p.data_ptr() for p in av.model.parameters()] == before


class _Attention:
    num_key_value_groups = 3
    is_causal = True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_attention_equals_sdpa_for_one_query(dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 6, 1, 16, generator=g).to(dtype)
    k, v = (torch.randn(4, 2, 9, 16, generator=g).to(dtype) for _ in range(2))
    visible = torch.rand(4, 1, 1, 9, generator=g) > 0.3
    visible[..., 0] = True
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for mask in (None, visible):
        with torch.no_grad():
            ours, _ = matmul_attention_forward(_Attention(), q, k, v, mask, scaling=0.25)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25, enable_gqa=True).transpose(1, 2)
        assert ours.shape == ref.shape == (4, 1, 6, 16)
        torch.testing.assert_close(ours, ref, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_attention_equals_sdpa_with_gradients(dtype):
    """The training path (gradients on): the same outputs and the same gradients for queries, keys and values as
    SDPA, with the causal mask implied (None, queries = keys) or given with padding after a cached prefix."""
    g = torch.Generator().manual_seed(1)
    n_q, n_k = 5, 8  # with a mask: the queries are the last 5 of 8 positions (a 3-position cached prefix)
    k, v = (torch.randn(3, 2, n_k, 16, generator=g).to(dtype) for _ in range(2))
    causal = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
    padded = causal.expand(3, 1, n_q, n_k).clone()
    padded[1, ..., 6:] = False  # row 1: its last two keys are padding
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    cases = [(n_k, None, torch.ones(n_k, n_k, dtype=torch.bool).tril()), (n_q, padded, padded)]
    for queries, ours_mask, ref_mask in cases:
        q = torch.randn(3, 6, queries, 16, generator=g).to(dtype)
        grads = []
        for fn in ("ours", "sdpa"):
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            if fn == "ours":
                out, _ = matmul_attention_forward(_Attention(), *leaves, ours_mask, scaling=0.25)
            else:
                out = F.scaled_dot_product_attention(
                    *leaves, attn_mask=ref_mask, scale=0.25, enable_gqa=True
                ).transpose(1, 2)
            out.float().pow(2).sum().backward()
            grads.append([out.detach(), *(t.grad for t in leaves)])
        for ours, ref in zip(*grads, strict=True):
            torch.testing.assert_close(ours, ref, **tol)


def test_matmul_attention_reads_is_causal_as_sdpa_does():
    """Without a mask (queries = keys): `is_causal` None means the module's setting (causal), False means none."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 5, 16, generator=g).requires_grad_(True)
    k, v = (torch.randn(2, 2, 5, 16, generator=g) for _ in range(2))
    for is_causal in (None, True, False):
        ours, _ = matmul_attention_forward(_Attention(), q, k, v, None, is_causal=is_causal)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal is not False, enable_gqa=True)
        torch.testing.assert_close(ours, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_matmul_attention_ignores_autocast_and_stays_finite_on_a_masked_row():
    """Under CPU autocast the scores stay float32 (the output equals the one without autocast, bit for bit); a
    query row that sees no key (left padding) gives finite values and leaves the other rows as they were."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 6, 4, 16, generator=g).to(torch.bfloat16).requires_grad_(True)
    k, v = (torch.randn(2, 2, 4, 16, generator=g).to(torch.bfloat16) for _ in range(2))
    mask = torch.ones(4, 4, dtype=torch.bool).tril().expand(2, 1, 4, 4).clone()
    plain, _ = matmul_attention_forward(_Attention(), q, k, v, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast, _ = matmul_attention_forward(_Attention(), q, k, v, mask)
    assert torch.equal(plain, autocast)
    blind = mask.clone()
    blind[1, :, 0] = False  # row 1's first query sees nothing
    out, _ = matmul_attention_forward(_Attention(), q, k, v, blind)
    assert torch.isfinite(out.float()).all()
    assert torch.equal(out[0], plain[0]) and torch.equal(out[1, 1:], plain[1, 1:])


def test_min_new_tokens_and_eos_padding(av):
    vectors = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    out = _run(av, fast_generate, vectors, SamplingConfig(max_new_tokens=12, min_new_tokens=12))
    assert out.shape == (3, 12)
    assert not torch.isin(out, torch.tensor(av.eos_ids)).any()


def test_sampling_is_seeded(av):
    vectors = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    cfg = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    first = _run(av, fast_generate, vectors, cfg)
    assert torch.equal(first, _run(av, fast_generate, vectors, cfg))
    assert not torch.equal(first, _run(av, fast_generate, vectors, SamplingConfig(10, temperature=1.0, seed=8)))


def _end(row: list[int], stop: int) -> int:
    """How many tokens a row generated with no stop token keeps when `stop` ends it (the stop included)."""
    return row.index(stop) + 1 if stop in row else len(row)


def _prompts(av: AV, vectors: torch.Tensor, padded: bool):
    """The AV's prompt embeddings with the vectors injected, as `generate_ids` builds them. `padded` makes the
    prompts of different lengths, as `synth`'s are: row r gets 0-3 extra leading tokens, and the batch is left-padded
    to the longest (which also turns off the shared-prefix path)."""
    n = len(vectors)
    ids = torch.tensor([av.prompt_ids] * n)
    with torch.inference_mode():
        embeds = av.embed(ids, torch.ones_like(ids), vectors)
        marker = av.prompt_ids.index(av.meta.tokens.injection_token_id)
        if not padded:
            return embeds, torch.ones_like(ids), marker
        table = av.model.get_input_embeddings()
        pad, filler = table(torch.tensor([av.tok.pad_token_id, av.tok.encode(" the")[0]]))
        extra = [(r % 2) * (1 + r // 2) for r in range(n)]  # 0, 1, 0, 2, 0, 3 leading tokens
        width = embeds.shape[1] + max(extra)
        out = pad.expand(n, width, -1).clone()
        mask = torch.zeros(n, width, dtype=torch.long)
        for r, e in enumerate(extra):
            start = max(extra) - e
            out[r, start:] = torch.cat([filler.expand(e, -1), embeds[r]])
            mask[r, start:] = 1
    return out, mask, 0


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_finished_rows_leave_the_batch_without_changing_the_others(lora_av, temperature, padded):
    """Rows that finish early are dropped from the decode batch (the model sees smaller batches), and every other row
    reads exactly as if all rows had run to the end, greedy or sampled (a row's draws do not depend on which rows are
    still there), with and without left padding."""
    vectors = torch.randn(6, 64, generator=torch.Generator().manual_seed(4)) * 30  # varied greedy text
    cfg = SamplingConfig(max_new_tokens=16, temperature=temperature, seed=3)
    pad = lora_av.tok.pad_token_id
    vocab = lora_av.model.get_input_embeddings().weight.shape[0]
    embeds, mask, marker = _prompts(lora_av, vectors, padded)

    def generate(stops: list[int]) -> tuple[list[list[int]], list[int]]:
        seen: list[int] = []
        hook = lora_av.model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(next(v for v in kwargs.values() if torch.is_tensor(v)).shape[0]),
            with_kwargs=True,
        )
        try:
            out = fast_generate(lora_av.model, embeds, mask, cfg, stops, pad, shared_prefix=marker)
        finally:
            hook.remove()
        return out.tolist(), seen

    free, seen_free = generate([vocab - 1])  # a token the tiny model does not write here: nobody stops
    assert len(free[0]) == 16 and all(vocab - 1 not in r for r in free)
    assert set(seen_free[-15:]) == {6}
    # the stop token that ends the rows at the most different steps
    stop = max({t for r in free for t in r}, key=lambda t: len({_end(r, t) for r in free}))
    ends = [_end(r, stop) for r in free]
    assert len(set(ends)) > 1  # rows really do finish at different steps
    cut, seen = generate([stop])
    assert cut == [r[:e] + [pad] * (max(ends) - e) for r, e in zip(free, ends, strict=True)]
    # each decode step carries only the rows still writing: one row per row whose end is later than that step
    decode = seen[-(max(ends) - 1) :] if max(ends) > 1 else []
    assert decode == [sum(e > k for e in ends) for k in range(1, max(ends))]
    if temperature == 0 and not padded:
        _assert_same_greedy(torch.tensor(cut), hf_generate(lora_av.model, embeds, mask, cfg, [stop], pad))


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = torch.log(probs).expand(20000, -1)
    draws = sample_next(logits, SamplingConfig(temperature=1.0), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)  # ~4 standard errors at n=20000
    hot = sample_next(logits, SamplingConfig(temperature=2.0), torch.Generator().manual_seed(0))
    flat = torch.softmax(torch.log(probs) / 2.0, -1)
    torch.testing.assert_close(torch.bincount(hot, minlength=5).float() / len(hot), flat, atol=0.015, rtol=0)


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    cfg = SamplingConfig(temperature=1.0, top_p=0.7)
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(2000, -1), cfg, g)
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 0.5 / 0.8) < 0.04  # renormalised within the nucleus
    assert int(sample_next(logits, SamplingConfig(), None)) == 0


def test_merged_lora_keeps_a_bf16_base_in_bf16():
    """PEFT keeps adapters in fp32 over a bf16 base: the merged weight stays bf16 (a bf16 input must still match it),
    and the originals come back bit for bit."""
    from nlakit.train.loop import add_lora

    av = AV.from_base("tiny", TINY_AV_META, dtype="bfloat16")
    av.model = perturb_lora(add_lora(av.model, 8, 16, task_type="CAUSAL_LM"), 0.1)
    before = {n: p.detach().clone() for n, p in av.model.named_parameters()}
    av.generator = fast_generate
    ids = av.generate_ids(torch.randn(3, 64, generator=torch.Generator().manual_seed(6)), SamplingConfig(8))
    assert ids.shape[0] == 3
    for n, p in av.model.named_parameters():
        assert p.dtype == before[n].dtype and torch.equal(p, before[n]), n


@pytest.mark.skipif(not generation._packs_linears(), reason="this CPU has no oneDNN bf16 path (AVX-512)")
def test_packed_linears_compute_the_same_and_put_the_forwards_back():
    """Prepacked bf16 linears (decoding) give the plain linears' logits; a pass with gradients runs the plain
    forwards (the same gradients as without packing); afterwards every module has its class's forward again."""
    av = AV.from_base("tiny", TINY_AV_META, dtype="bfloat16")
    ids = torch.randint(3, 200, (3, 24), generator=torch.Generator().manual_seed(8))
    head = av.model.get_output_embeddings()
    with torch.inference_mode():
        plain = av.model(input_ids=ids).logits.float()
        with packed_linears(av.model, 3):
            assert "forward" in vars(head)  # packing is in effect
            packed = av.model(input_ids=ids).logits.float()
    torch.testing.assert_close(packed, plain, atol=2e-2, rtol=2e-2)
    assert float((packed.argmax(-1) == plain.argmax(-1)).float().mean()) > 0.9
    assert not any("forward" in vars(m) for m in av.model.modules())

    def head_grad(packing: bool) -> torch.Tensor:
        head.weight.grad = None
        with packed_linears(av.model, 3) if packing else contextlib.nullcontext():
            av.model(input_ids=ids).logits.float().pow(2).mean().backward()
        return head.weight.grad.clone()

    head.weight.requires_grad_(True)
    try:
        torch.testing.assert_close(head_grad(True), head_grad(False), atol=0, rtol=0)
    finally:
        head.weight.requires_grad_(False)
        head.weight.grad = None


def test_the_head_check_follows_the_model(lora_av):
    """`_plain_head` is decided per model: a model swapped in (RL's reference) is checked on its own, and a head with
    a bias takes the whole-LM path."""
    import copy

    assert lora_av._plain_head()
    live = lora_av.model
    other = copy.deepcopy(live)
    head = other.get_base_model().lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight, biased.bias = head.weight, torch.nn.Parameter(torch.ones(head.out_features))
    other.get_base_model().lm_head = biased
    lora_av.model = other
    try:
        assert not lora_av._plain_head()
    finally:
        lora_av.model = live
    assert lora_av._plain_head()
