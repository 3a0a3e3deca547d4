#!/usr/bin/env bash
# v6 candidate: the shipped AV, trained on more of the teacher's data. It had seen only 4,800 of the 24,032 wiki
# training pairs (av_sft.yaml's first run, 300 steps), with its validation loss still falling; here it continues
# on more (av_more.yaml), from a seeded sample of 6,400 rows of the whole training split, explained by the current
# teacher. Session 11 stopped it at step 90 of 160: worse than the shipped AV through v5's AR (recipe README).
# v5's AR scores its greedy text during training (copied to out/ar). Every stage resumes; after an interruption:
#     nohup recipes/smollm2-L20/av_more.sh > runs/smollm2-L20/av_more.log 2>&1 &
set -euo pipefail
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
OUT=$R/nla_v6av
# 1. a seeded sample of the training split's rows (its documents are all train-side; alphabetical order otherwise)
[ -f $R/av_more_src/nla_meta.yaml ] || .venv/bin/python - <<'PY'
from dataclasses import replace
from pathlib import Path
import numpy as np
from nlakit import dataset as ds
from nlakit.meta import read_dataset_meta, write_dataset_meta
src, out = Path("runs/smollm2-L20/v1_split/train"), Path("runs/smollm2-L20/av_more_src")
table = ds.read_table(src)
rows = np.sort(np.random.default_rng(0).choice(table.num_rows, 6400, replace=False))
table = table.take(rows)
out.mkdir(parents=True, exist_ok=True)
ds.write_parquet(out / ds.part_name(0), table)
meta = read_dataset_meta(src)
write_dataset_meta(out, replace(meta, dataset_id=meta.dataset_id + "__s6400", row_count=table.num_rows,
                                parent_datasets=[meta.dataset_id], created_at=None))  # last: marks the step done
PY
# 2. the teacher's explanations of those rows
$NLA datagen $R/av_more_src --out $R/av_more_train
# 3. the AV continues from the shipped one; v5's AR alongside scores its greedy text on the validation rows
mkdir -p $OUT
[ -d $OUT/ar ] || cp -r $R/nla_v5q/ar $OUT/ar
$NLA train av --config recipes/smollm2-L20/av_more.yaml
