"""AV SFT recipe: teach the verbaliser to write the explanation of the vector injected at its marker.

Loss: response-token NLL (prompt tokens masked). Validation: the loss with the real vectors and with shuffled ones;
a positive gap (shuffled - real) shows the AV reads the vector rather than a prior.
Output: `out/av/` and `out/train_av/`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from nlakit.ar import AR
from nlakit.av import AV, default_injection_scale
from nlakit.config import SFTConfig, dump_config
from nlakit.dataset import load_pairs
from nlakit.errors import NlakitError
from nlakit.maths import fve_nrm
from nlakit.meta import AV_TEMPLATE
from nlakit.nla import resolve_nla_path, score_texts
from nlakit.train.loop import add_lora, start_run
from nlakit.train.sft import check_init_from, run_sft, sft_model_meta, shuffled


def train_av(cfg: SFTConfig) -> dict[str, float]:
    start_run(Path(cfg.out) / "train_av", dump_config(cfg), cfg.seed)
    train = load_pairs(cfg.data, cfg.explanation_column)
    ext = train.meta.extraction
    base = cfg.base or ext.base_model
    av_template = cfg.av_template or AV_TEMPLATE
    if av_template.count("{injection_char}") != 1:
        raise NlakitError("av_template must contain {injection_char} exactly once (where the vector goes)")
    mean_norm = ext.mean_norm or float(np.linalg.norm(train.vectors.numpy(), axis=1).mean())
    meta = sft_model_meta(
        "av",
        cfg,
        train,
        None,  # the marker is found for the base's tokenizer by AV.from_base
        av_template=av_template,
        injection_scale=cfg.injection_scale or default_injection_scale(mean_norm),
        loss_type="sft_nll",
    )
    if cfg.init_from:
        # fine-tune a trained AV further (e.g. on its own AR-picked best explanations): its adapter, prompt and
        # injection scale carry on, since the vectors must reach it as they did in its training
        src = resolve_nla_path(cfg.init_from) / "av"
        av = AV.from_pretrained(src, device=cfg.device, dtype=cfg.dtype, trainable=True)
        check_init_from(src, av.meta, meta, "reads")
        # so does its generation cap: explain and eval default to the length it was trained to write
        cap = (av.meta.training or {}).get("max_new_tokens")
        av.meta = replace(
            meta,
            tokens=av.meta.tokens,
            prompt_templates=av.meta.prompt_templates,
            injection_scale=av.meta.injection_scale,
            parent_checkpoints=[str(src)],
            training={**(meta.training or {}), **({"max_new_tokens": cap} if cap else {})},
        )
    else:
        av = AV.from_base(base, meta, device=cfg.device, dtype=cfg.dtype)
        # its generation cap is the longest response it learns to write, closing tokens included: explain and eval
        # stop there, not at the reference client's 200, which lets a repeating AV run on
        cap = max(len(av.response_ids(t)) for t in train.texts)
        av.meta = replace(av.meta, training={**(av.meta.training or {}), "max_new_tokens": cap})
        if cfg.lora:
            av.model = add_lora(av.model, cfg.lora_r, cfg.lora_alpha, task_type="CAUSAL_LM")
    val = load_pairs(cfg.val_data, cfg.explanation_column, cfg.eval_rows) if cfg.val_data else None

    val_shuffled = shuffled(val.vectors, cfg.seed) if val else None
    # the AR trained first (out/ar) scores the AV's own greedy explanations against the teacher's on the same rows:
    # the fraction of the teacher's fve the AV passes on is what RL starts from
    ar_dir = Path(cfg.out) / "ar"
    ar = (
        AR.from_pretrained(ar_dir, device=cfg.device, dtype=cfg.dtype)
        if cfg.eval_fve_rows and ar_dir.is_dir()
        else None
    )
    teacher = None

    def evaluate() -> dict[str, float]:
        nonlocal teacher
        if val is None:
            return {}
        real = shuf = 0.0
        batches = range(0, len(val.texts), cfg.batch_size)
        for b in batches:
            texts, sl = val.texts[b : b + cfg.batch_size], slice(b, b + cfg.batch_size)
            real += float(av.sft_loss(val.vectors[sl], texts))
            shuf += float(av.sft_loss(val_shuffled[sl], texts))
        n = len(batches)
        out = {"val_loss": real / n, "val_loss_shuffled": shuf / n, "val_gap": (shuf - real) / n}
        if ar is not None:
            rows, rawvar = slice(0, cfg.eval_fve_rows), ar.meta.training["rawvar_baseline"]
            if teacher is None:
                teacher = float(score_texts(ar, val.texts[rows], val.vectors[rows])["mse_nrm"].mean())
            own = av.verbalize(val.vectors[rows], max_new_tokens=cfg.eval_max_new_tokens)
            mse = float(score_texts(ar, own, val.vectors[rows])["mse_nrm"].mean())
            fve, fve_teacher = float(fve_nrm(mse, rawvar)), float(fve_nrm(teacher, rawvar))
            out.update(val_fve_nrm=fve, val_teacher_fve_nrm=fve_teacher, val_av_over_teacher=fve / fve_teacher)
        return out

    plot = ["loss", "val_loss", "val_gap", "val_fve_nrm", "val_av_over_teacher", "lr"]
    result = run_sft(cfg, "av", av.model, train, av.sft_loss, evaluate, plot)
    av.save_pretrained(Path(cfg.out) / "av")
    return result
