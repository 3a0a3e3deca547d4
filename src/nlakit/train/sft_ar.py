"""AR SFT recipe: teach the reconstructor to map an explanation back to its activation.

Loss: mse_nrm at the last token (2(1 - cos) at sqrt(d)). Validation: fve_nrm against the training set's rawvar.
Output: `out/ar/` (adapters or full weights, value_head.safetensors, nla_meta.yaml) and `out/train_ar/` (metrics,
curves.png, checkpoints)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from nlakit.ar import AR
from nlakit.config import SFTConfig, dump_config
from nlakit.dataset import load_pairs
from nlakit.errors import NlakitError
from nlakit.injection import find_marker
from nlakit.maths import fve_nrm, meannorm_baseline, mse_nrm, rawvar_baseline
from nlakit.meta import AR_TEMPLATE, AV_TEMPLATE
from nlakit.models import load_tokenizer
from nlakit.nla import resolve_nla_path
from nlakit.train.loop import add_lora, start_run
from nlakit.train.sft import check_init_from, run_sft, sft_model_meta


def evaluate_ar(ar: AR, vectors: torch.Tensor, texts: list[str], rawvar: float) -> dict[str, float]:
    pred = ar.reconstruct(texts)
    mse = float(mse_nrm(pred, vectors, ar.meta.mse_scale).mean())
    return {"val_mse_nrm": mse, "val_fve_nrm": float(fve_nrm(mse, rawvar))}


def train_ar(cfg: SFTConfig) -> dict[str, float]:
    ar_template = cfg.ar_template or AR_TEMPLATE
    if ar_template.count("{explanation}") != 1 or ar_template.count("{quote}") > 1:
        raise NlakitError("ar_template must contain {explanation} once (and {quote} at most once)")
    start_run(Path(cfg.out) / "train_ar", dump_config(cfg), cfg.seed)
    train = load_pairs(cfg.data, cfg.explanation_column)
    ext = train.meta.extraction
    base = cfg.base or ext.base_model
    tok = load_tokenizer(base)
    # the FVE denominators of the training distribution go in the sidecar, so inference can report fve_nrm
    meta = sft_model_meta(
        "ar",
        cfg,
        train,
        find_marker(tok, AV_TEMPLATE, ar_template),
        injection_scale=None,
        loss_type="mse_nrm",
        rawvar_baseline=rawvar_baseline(train.vectors),
        meannorm_baseline=meannorm_baseline(train.vectors),
        ar_template=ar_template,
    )
    if cfg.init_from:
        # adapt a trained AR (e.g. to the AV's text on new registers): its adapter, head and sidecar carry on
        src = resolve_nla_path(cfg.init_from) / "ar"
        ar = AR.from_pretrained(src, device=cfg.device, dtype=cfg.dtype, trainable=True)
        check_init_from(src, ar.meta, meta, "reconstructs")
        if cfg.ar_template:  # a new way of reading: the new template and its suffix ids
            tokens, templates = meta.tokens, {**ar.meta.prompt_templates, "ar": ar_template}
        else:  # its template and suffix ids carry on
            tokens, templates = ar.meta.tokens, ar.meta.prompt_templates
        ar.meta = replace(meta, tokens=tokens, prompt_templates=templates, parent_checkpoints=[str(src)])
    else:
        ar = AR.from_base(base, meta, device=cfg.device, dtype=cfg.dtype)
        if cfg.lora:
            ar.backbone = add_lora(ar.backbone, cfg.lora_r, cfg.lora_alpha)
    ar.value_head.weight.requires_grad_(True)

    val = load_pairs(cfg.val_data, cfg.explanation_column, cfg.eval_rows) if cfg.val_data else None
    rawvar = rawvar_baseline(train.vectors)

    def evaluate() -> dict[str, float]:
        out = {"rawvar": rawvar, "meannorm": meannorm_baseline(train.vectors)}
        if val is not None:
            out.update(evaluate_ar(ar, val.vectors, val.texts, rawvar))
        return out

    result = run_sft(
        cfg, "ar", ar, train, lambda v, t: ar.loss(t, v), evaluate, ["loss", "val_mse_nrm", "val_fve_nrm", "lr"]
    )
    ar.save_pretrained(Path(cfg.out) / "ar")
    return result
