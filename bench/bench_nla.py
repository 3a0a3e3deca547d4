"""AR training and AV generation throughput on the real SmolLM2, each against a plain-HF baseline on the same data."""

from __future__ import annotations

import math
import time
from pathlib import Path

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

    av = AV.from_base("smollm2-135m", layer=20, injection_scale=250.0, dtype="bfloat16")
    model, tok = av.model, av.tok
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
    t, cpu = time.perf_counter(), time.process_time()
    n = run()
    dt, cpu = time.perf_counter() - t, time.process_time() - cpu
    # FLOPs of one decode step per row: every linear (LM head included) plus attention over the mean context
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    context = len(av.prompt_ids) + new_tokens / 2
    attention = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    return {
        "tok_s": n / dt,
        "seconds": dt,
        "cpu_seconds": cpu,
        "tokens": n,
        "prompt_tokens": len(av.prompt_ids),
        "gflop_per_token": (2 * linear + attention * context) / 1e9,
    }


def make_base_nla(path: str, layer: int = 20) -> str:
    """An NLA for SmolLM2 straight from the base weights (fresh LoRA adapters, identity value head): for timing."""
    from dataclasses import replace
    from pathlib import Path

    from nlakit.ar import AR
    from nlakit.av import AV
    from nlakit.nla import write_pair_meta
    from nlakit.train.loop import add_lora

    root = Path(path)
    if (root / "nla_meta.yaml").is_file():
        return path
    av = AV.from_base("smollm2-135m", layer=layer, injection_scale=250.0, dtype="float32")
    av.model = add_lora(av.model, 16, 32, task_type="CAUSAL_LM")
    av.save_pretrained(root / "av")
    ar_meta = replace(av.meta, role="ar", injection_scale=None, training={"rawvar_baseline": 0.457})
    ar = AR.from_base("smollm2-135m", ar_meta, dtype="float32")
    ar.backbone = add_lora(ar.backbone, 16, 32)
    ar.save_pretrained(root / "ar")
    write_pair_meta(root)
    return path


# 40 SmolLM2 tokens; bench/explain_process.sh reads the same file
PROMPT_40 = (Path(__file__).parent / "prompt_40.txt").read_text(encoding="utf-8").strip()


def explain_latency(mode: str, nla_dir: str, new_tokens: int = 80, baseline_positions: int = 6) -> dict:
    """Seconds per position of a 40-token prompt, every explanation forced to `new_tokens` tokens (a typical
    explanation length), greedy. mode=nlakit: `NLA.explain` (all positions in one batched, prefix-shared
    generation); mode=baseline: one plain HF `generate` per position, as a per-request server would (timed on
    `baseline_positions` positions)."""
    from nlakit.generation import SamplingConfig, hf_generate
    from nlakit.nla import NLA

    nla = NLA.from_pretrained(make_base_nla(nla_dir), dtype="bfloat16")
    ids, acts = nla.activations(PROMPT_40)
    orig = nla.av.generator
    if mode == "nlakit":

        def forced(model, embeds, mask, cfg, eos_ids, pad_id, shared_prefix=0):
            cfg = SamplingConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
            return orig(model, embeds, mask, cfg, eos_ids, pad_id, shared_prefix)

        nla.av.generator = forced
        nla.explain(PROMPT_40, [1, 2])  # warm-up
        t = time.perf_counter()
        rows = nla.explain(PROMPT_40)
        dt = time.perf_counter() - t
        return {"sec_per_position": dt / len(rows), "positions": len(rows), "seconds": dt, "prompt_tokens": len(ids)}
    cfg = SamplingConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    nla.av.generator = hf_generate
    nla.av.generate_ids(acts[1:2], cfg)  # warm-up
    t = time.perf_counter()
    for p in range(1, 1 + baseline_positions):
        texts = nla.av.tok.batch_decode(nla.av.generate_ids(acts[p : p + 1], cfg), skip_special_tokens=True)
        nla.ar.reconstruct(texts)
    dt = time.perf_counter() - t
    return {
        "sec_per_position": dt / baseline_positions,
        "positions": baseline_positions,
        "seconds": dt,
        "prompt_tokens": len(ids),
    }


def _rl_steps(nla: str, data_dir: str, steps: int, prompts: int = 4, **cfg) -> list[dict]:
    """The log rows of `steps` RL steps (`prompts` activations x group 4, 96-token cap) after one warm-up step; only
    fields that b59fa06's RLConfig also has, so an older nlakit on the path runs the same thing."""
    import json
    import tempfile
    from pathlib import Path

    from nlakit.train.rl import RLConfig, train_rl

    with tempfile.TemporaryDirectory() as tmp:
        train_rl(
            RLConfig(
                data=data_dir,
                nla=nla,
                out=tmp,
                max_steps=steps + 1,
                save_every=1000,
                max_new_tokens=96,
                group_size=4,
                prompts_per_step=prompts,
                **cfg,
            )
        )
        rows = [json.loads(ln) for ln in (Path(tmp) / "train_rl" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "sec" in r][1:]


def rl_step(nla_dir: str, data_dir: str, steps: int = 3) -> dict:
    """Seconds per RL step on SmolLM2 (4 activations x group 4, 96-token cap) and the share of each phase."""
    import statistics
    from pathlib import Path

    from nlakit.extract import ExtractConfig, extract

    if not (Path(data_dir) / "nla_meta.yaml").is_file():
        extract(
            ExtractConfig(
                model="smollm2-135m", layers=[20], corpus="wiki", out=Path(data_dir), max_docs=64, positions_per_doc=2
            )
        )
    rows = _rl_steps(make_base_nla(nla_dir), data_dir, steps, kl_every=1)  # every step runs the reference pass
    return {
        k: statistics.median(r[k] for r in rows)
        for k in ("sec", "sec_generate", "sec_reward", "sec_av_update", "sec_ar_update", "length")
    }


def rl_rollouts(nla_dir: str, data_dir: str, steps: int = 3, autocast: str = "none", prompts: int = 4, **extra) -> dict:
    """RL steps from a trained NLA (fp32 weights) with whichever nlakit is on the path: rollouts/s, and the reward
    and length that show both revisions sample alike. `extra`: RLConfig fields only the newer revision has."""
    import statistics
    from pathlib import Path

    import nlakit

    rows = _rl_steps(nla_dir, data_dir, steps, prompts, eval_every=1000, dtype="float32", autocast=autocast, **extra)
    out = {k: statistics.median(r[k] for r in rows) for k in ("sec", "sec_generate", "sec_av_update", "length")}
    out["reward"] = statistics.mean(r["reward"] for r in rows)
    out["rollouts_s"] = 4 * prompts / out["sec"]
    out["nlakit"] = str(Path(nlakit.__file__).parent)
    return out


def rollout_quality(nla_dir: str, data_dir: str, rows: int = 128, batch: int = 16) -> dict:
    """RL rollouts decoded on the fp32 weights and on their bf16 copy (`rollout_dtype`), the same vectors and seeds,
    scored by the same fp32 AR: mean mse_nrm (failed samples count 2.0, as RL's reward does), the failure rate, and
    the paired difference with a 95% bootstrap interval over vectors. Seconds per batch for each."""
    import random
    import statistics

    from nlakit.ar import AR
    from nlakit.av import AV
    from nlakit.config import SamplingConfig
    from nlakit.dataset import load_pairs
    from nlakit.nla import resolve_nla_path, score_texts
    from nlakit.train.rl import MAX_AR_TOKENS

    src = resolve_nla_path(nla_dir)
    av = AV.from_pretrained(src / "av", dtype="float32", trainable=True)
    ar = AR.from_pretrained(src / "ar", dtype="float32")
    av.model.eval()
    vectors = load_pairs(data_dir, "context", rows).vectors
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        mse, failed, secs = [], [], []
        for b in range(0, len(vectors), batch):
            gold = vectors[b : b + batch]
            t = time.perf_counter()
            r = av.rollout(gold, SamplingConfig(96, temperature=1.0, seed=b), dtype)
            secs.append(time.perf_counter() - t)
            ok = r.ok & ar.fits(r.explanations, MAX_AR_TOKENS)
            with torch.no_grad():
                m = score_texts(ar, [e if k else "" for e, k in zip(r.explanations, ok, strict=True)], gold)["mse_nrm"]
            mse += m.tolist()
            failed += (~ok).tolist()
        out[name] = {"mse": mse, "failed": statistics.mean(failed), "sec_per_batch": statistics.median(secs)}
    diff = [b - a for a, b in zip(out["fp32"]["mse"], out["bf16"]["mse"], strict=True)]
    rng = random.Random(0)
    boots = sorted(statistics.mean(rng.choices(diff, k=len(diff))) for _ in range(2000))
    return {
        "rows": len(diff),
        **{
            f"{k}_{f}": v[f] if f != "mse" else statistics.mean(v["mse"])
            for k, v in out.items()
            for f in ("mse", "failed", "sec_per_batch")
        },
        "bf16_minus_fp32": statistics.mean(diff),
        "ci95": [boots[50], boots[1949]],
    }
