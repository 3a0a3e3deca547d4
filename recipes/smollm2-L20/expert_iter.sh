#!/usr/bin/env bash
# Expert iteration, round 1: RL's AV half done offline. For each of 448 training activations the shipped AV writes
# its greedy text and 7 samples; the shipped AR keeps the one that reconstructs the vector best (`nla datagen
# --best-of 8`); the AV is then fine-tuned on those picks (`nla train av init_from=...`), so that its greedy text
# moves toward them. Every stage resumes, so run the script again after an interruption or in the next sitting:
#     nohup recipes/smollm2-L20/expert_iter.sh > runs/smollm2-L20/expert_iter.log 2>&1 &
set -euo pipefail
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
SHIP=src/nlakit/assets/nla/smollm2-135m-L20
OUT=$R/nla_ei1
# 1. 1,200 activations of training documents, shuffled (seed 0): rl_gpu_data/train holds wiki (v1's train split),
#    chat and code (the chat/code train split), news and instructions (their train split), in document order
[ -f $R/ei_rows/nla_meta.yaml ] || .venv/bin/python - <<'PY'
from dataclasses import replace
from pathlib import Path
import numpy as np
from nlakit import dataset as ds
from nlakit.meta import read_dataset_meta, write_dataset_meta
src, out = Path("runs/smollm2-L20/rl_gpu_data/train"), Path("runs/smollm2-L20/ei_rows")
table, meta = ds.read_table(src), read_dataset_meta(src)
keep = np.random.default_rng(0).permutation(table.num_rows)[:1200]
out.mkdir(parents=True, exist_ok=True)
ds.write_parquet(out / ds.part_name(0), table.take(keep))
meta = replace(meta, dataset_id=meta.dataset_id + "__ei1200", row_count=len(keep), parent_datasets=[meta.dataset_id], created_at=None)
write_dataset_meta(out, meta)  # last: its presence marks the step done
PY
# 2. best of 8 by the shipped AR for the first 448 of them (about 1 rollout/s on 2 CPU cores: 55 min; all 1,200
#    would take 2.7 h). Session 9 seeded ei_best8_448 with the explanation cache of an interrupted run over all
#    1,200 rows (runs/smollm2-L20/ei_best8): the same rows in the same 64-row batches and seeds, so the same texts.
$NLA datagen $R/ei_rows --provider nla --model $SHIP --best-of 8 --max-rows 448 --out $R/ei_best8_448
# 3. the shipped AV, one epoch on its picks, scored through the shipped AR (copied to out/ar)
mkdir -p $OUT
[ -d $OUT/ar ] || cp -r $SHIP/ar $OUT/ar
$NLA train av --config recipes/smollm2-L20/expert_iter.yaml
# 4. held out, greedy (the default path); v1's AR, the most distant reader, reads the same text (as for v4best8, whose
#    report gives v4's greedy text under v1's AR on the same rows)
recipes/smollm2-L20/eval.sh $OUT runs/smollm2-L20/nla_v1 reports/smollm2-135m-L20/ei1
