#!/usr/bin/env bash
# The whole recipe for the embedded NLA (v2), one command per stage. Every stage resumes where it stopped and
# skips work already done, so after an interruption (or at the start of the next sitting) run this script again:
#     nohup recipes/smollm2-L20/run.sh > runs/smollm2-L20/run.log 2>&1 &
# Stages stop at the first failure (set -e). Run from the repository root.
set -euo pipefail
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
mkdir -p $R

# 1. corpora: wiki leads (embedded, CC BY-SA) and five offline registers (see README: sources and licenses)
$NLA extract --model smollm2-135m --layer 20 --corpus wiki --positions-per-doc 3 --dtype float32 --out $R/acts_wiki
[ -f $R/synth.jsonl ] || $NLA synth --out $R/synth.jsonl --docs-per-register 120 --dtype float32
$NLA extract --model smollm2-135m --layer 20 --corpus $R/synth.jsonl --positions-per-doc 5 --dtype float32 \
    --out $R/acts_synth

# 2. teacher explanations (grounded v2: one fixed format, every field a function of the context)
$NLA datagen $R/acts_synth --out $R/explained_synth
$NLA datagen $R/acts_wiki --out $R/explained_wiki

# 3. one document-level split over both sources (seed 42)
[ -f $R/split/test/nla_meta.yaml ] || $NLA split $R/explained_wiki $R/explained_synth --out $R/split --seed 42

# 4. AR SFT, AV SFT (one epoch over every pair), then RL until val fve stops rising
$NLA train ar --config recipes/smollm2-L20/ar_sft.yaml
$NLA train av --config recipes/smollm2-L20/av_sft.yaml
$NLA train rl --config recipes/smollm2-L20/rl.yaml
