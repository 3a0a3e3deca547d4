"""AR training and AV generation throughput on the real SmolLM2, each against a plain-HF baseline on the same data."""

from __future__ import annotations

import math
import time

import torch


def _explanations(n: int) -> list[str]:
    from nlakit.corpus import load_corpus

    docs = load_corpus("wiki", max_docs=4 * n)
    return [" ".join(d.text.split()[:50]) for d in docs][:n]


def ar_train_step(mode: str, batch: int = 8, steps: int = 6, layer: int = 20, lora: bool = True) -> dict:
    """tokens/s of AR SFT steps (fwd+bwd+AdamW, bf16 autocast). mode=nlakit: `AR.loss` on explanations;
    mode=baseline: the same truncated HF backbone called directly on the same pre-tokenised batch, MSE on the last
    token, no nlakit code in the loop."""
    from nlakit.ar import AR
    from nlakit.meta import ModelMeta
    from nlakit.train.loop import add_lora

    d = 576
    meta = ModelMeta(
        role="ar",
        d_model=d,
        extraction_layer_index=layer,
        injection_scale=None,
        mse_scale=math.sqrt(d),
        base_checkpoint="smollm2-135m",
    )
    ar = AR.from_base("smollm2-135m", meta, dtype="float32")
    if lora:
        ar.backbone = add_lora(ar.backbone, 16, 32)
    params = [p for p in ar.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    texts = _explanations(batch * (steps + 1))
    gold = torch.randn(len(texts), d)
    ids_all, mask_all = ar.encode(texts)
    n_tok = 0

    def step(i: int) -> None:
        nonlocal n_tok
        sl = slice(i * batch, (i + 1) * batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if mode == "nlakit":
                loss = ar.loss(texts[sl], gold[sl])
                n = int(ar.encode(texts[sl])[1].sum())
            else:
                ids, mask = ids_all[sl], mask_all[sl]
                h = ar.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
                last = h[torch.arange(batch), mask.sum(1) - 1]
                pred = ar.value_head(last.float())
                loss = (
                    ((pred / pred.norm(dim=-1, keepdim=True) - gold[sl] / gold[sl].norm(dim=-1, keepdim=True)) ** 2)
                    .sum(-1)
                    .mean()
                )
                n = int(mask.sum())
        loss.backward()
        opt.step()
        opt.zero_grad()
        n_tok += n

    step(0)
    n_tok = 0
    t = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    dt = time.perf_counter() - t
    return {"tok_s": n_tok / dt, "seconds": dt, "tokens": n_tok}


def av_generate(mode: str, batch: int = 32, new_tokens: int = 64) -> dict:
    """Generated tokens/s for one batch, every row forced to `new_tokens`. mode=nlakit: `AV.generate_ids` (vector
    injected, sampled); mode=baseline: plain HF `generate` from `input_ids` of the same prompt and batch size."""
    from nlakit.av import AV
    from nlakit.generation import SamplingConfig
    from nlakit.injection import find_marker
    from nlakit.meta import AV_TEMPLATE, ModelMeta
    from nlakit.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    model = load_causal_lm("smollm2-135m", dtype="bfloat16")
    meta = ModelMeta(
        role="av",
        d_model=576,
        extraction_layer_index=20,
        injection_scale=250.0,
        mse_scale=24.0,
        tokens=find_marker(tok, AV_TEMPLATE),
        base_checkpoint="smollm2-135m",
    )
    av = AV(model, tok, meta)
    vectors = torch.randn(batch, 576)
    cfg = SamplingConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=1.0, seed=0)
    ids = torch.tensor([av.prompt_ids] * batch)

    def run() -> int:
        if mode == "nlakit":
            out = av.generate_ids(vectors, cfg)
        else:
            torch.manual_seed(0)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    pad_token_id=tok.pad_token_id,
                )[:, ids.shape[1] :]
        return out.shape[0] * out.shape[1]

    run()
    t = time.perf_counter()
    n = run()
    dt = time.perf_counter() - t
    return {"tok_s": n / dt, "seconds": dt, "tokens": n, "prompt_tokens": len(av.prompt_ids)}
