#!/usr/bin/env bash
# Expert iteration, round 1: RL's AV half done offline. For each training activation the shipped AV writes its greedy
# text and 7 samples; the shipped AR keeps the one that reconstructs the vector best (`nla datagen --best-of 8`);
# the AV is then fine-tuned on those picks (`nla train av init_from=...`), so that its greedy text moves toward
# them. Every stage resumes, so run the script again after an interruption or in the next sitting:
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
# 2. best of 8 by the shipped AR (about 1 rollout/s on 2 CPU cores: ~2.7 h for 1,200 rows x 8)
$NLA datagen $R/ei_rows --provider nla --model $SHIP --best-of 8 --out $R/ei_best8
# 3. the shipped AV, one epoch on its picks, scored through the shipped AR (copied to out/ar)
mkdir -p $OUT
[ -d $OUT/ar ] || cp -r $SHIP/ar $OUT/ar
$NLA train av --config recipes/smollm2-L20/expert_iter.yaml
# 4. held out, greedy (the default path), with the shipped NLA's AR reading the same text
recipes/smollm2-L20/eval.sh $OUT $SHIP reports/smollm2-135m-L20/ei1
