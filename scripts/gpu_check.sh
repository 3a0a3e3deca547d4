#!/usr/bin/env bash
# GPU check: the whole pipeline on CUDA with SmolLM2-135M in bf16, printing per-stage wall time and throughput.
#   extract -> split -> datagen (grounded, offline) -> AR SFT -> AV SFT -> a few RL steps (bf16, then fp32 weights
#   with bf16 autocast, validation and paraphrases) -> explain -> eval
# Usage: scripts/gpu_check.sh [OUT_DIR [MODEL LAYER CORPUS [DEVICE]]]
#   defaults: runs/gpu_check smollm2-135m 20 wiki cuda. `tiny 2 FILE.txt` checks every CUDA code path with no weights
#   file and no corpus package (a machine where only the repo travels); DEVICE cpu dry-runs the script itself.
# Needs `make setup` (or NLA/PY pointing at an nlakit install); nothing else depends on this script.
set -euo pipefail
OUT=${1:-runs/gpu_check}
MODEL=${2:-smollm2-135m}
LAYER=${3:-20}
CORPUS=${4:-wiki}
DEVICE=${5:-cuda}
NLA=${NLA:-.venv/bin/nla}
PY=${PY:-.venv/bin/python}
DEV=(--device "$DEVICE" --dtype bfloat16)
if [ "$DEVICE" != cpu ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs a GPU')"
  "$PY" -c "import torch; print('gpu:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
fi
rm -rf "$OUT" && mkdir -p "$OUT"

stage() {  # stage NAME UNITS COUNT CMD... : run CMD, print seconds and COUNT/second
  local name=$1 units=$2 count=$3; shift 3
  local t0 t1; t0=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1 || { echo "FAILED: $name (see $OUT/$name.log)"; tail -20 "$OUT/$name.log"; exit 1; }
  t1=$(date +%s.%N)
  "$PY" -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); \
print(f'{sys.argv[4]:<10} {s:8.1f} s   ' + (f'{n/s:10.1f} {sys.argv[5]}/s' if n else ''))" "$t0" "$t1" "$count" "$name" "$units"
}

DOCS=2000; PPD=5
stage extract rows $((DOCS * PPD)) "$NLA" extract --model "$MODEL" --layer "$LAYER" --corpus "$CORPUS" --max-docs $DOCS \
  --positions-per-doc $PPD --out "$OUT/acts" --batch-size 64 "${DEV[@]}"
stage split rows 0 "$NLA" split "$OUT/acts" --out "$OUT/split" --fractions 0.8,0.1,0.1
stage datagen rows 0 "$NLA" datagen "$OUT/split/train" --out "$OUT/train_x"
stage datagen_val rows 0 "$NLA" datagen "$OUT/split/val" --out "$OUT/val_x"
SFT=(batch_size=32 device="$DEVICE" dtype=bfloat16 autocast=none save_every=100 eval_every=100 log_every=10)
stage ar_sft steps 200 "$NLA" train ar data="$OUT/train_x" val_data="$OUT/val_x" out="$OUT/nla" max_steps=200 "${SFT[@]}"
stage av_sft steps 200 "$NLA" train av data="$OUT/train_x" val_data="$OUT/val_x" out="$OUT/nla" max_steps=200 "${SFT[@]}"
stage rl steps 5 "$NLA" train rl data="$OUT/train_x" nla="$OUT/nla" out="$OUT/nla_rl" max_steps=5 group_size=8 \
  prompts_per_step=8 save_every=5 eval_every=100 device="$DEVICE" dtype=bfloat16 autocast=none
# the long-run setting: fp32 master weights, bf16 autocast, validation and paraphrase augmentation
stage rl_amp steps 3 "$NLA" train rl data="$OUT/train_x" val_data="$OUT/val_x" nla="$OUT/nla" out="$OUT/nla_rl_amp" \
  max_steps=3 group_size=4 prompts_per_step=4 save_every=3 eval_every=3 eval_rows=8 paraphrase_aug=true \
  device="$DEVICE" dtype=float32 autocast=bfloat16
TEXT="The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was designed by the engineer"
stage explain positions 20 "$NLA" explain "$TEXT" --nla "$OUT/nla_rl" --json "$OUT/explain.json" "${DEV[@]}"
stage eval positions 256 "$NLA" eval --nla "$OUT/nla_rl" --corpus "$CORPUS" --docs-from "$OUT/split/test" --out "$OUT/report" \
  --max-positions 256 "${DEV[@]}"
grep -h "tokens/s\|fve" "$OUT"/*.log | tail -5 || true
echo "gpu_check: OK ($OUT)"
