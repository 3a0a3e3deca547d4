#!/usr/bin/env bash
# v5 (shipped): v4's AR re-trained to read the quote (ar_quote.yaml), then the held-out eval of v4's AV
# with it. Every stage resumes, so after an interruption run it again:
#     nohup recipes/smollm2-L20/ar_quote.sh > runs/smollm2-L20/ar_quote.log 2>&1 &
set -euo pipefail
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
OUT=$R/nla_v5q
# v4, the package's NLA before v5 (commit bb7ee3e): where v5's AR starts, and the AR it is compared with
V4=$R/nla_v4
[ -d $V4/ar ] || { mkdir -p $V4 && git archive bb7ee3e src/nlakit/assets/nla/smollm2-135m-L20 | tar -x --strip-components=5 -C $V4; }
# 1. the AV's own text on training activations: 1,377 greedy (the v3 AR-adaptation pairs, ar_adapt_v3.sh) + 448
#    best-of-8 picks (expert_iter.sh, step 2)
[ -f $R/ar_quote_train/nla_meta.yaml ] || .venv/bin/python - <<'PY'
from dataclasses import replace
from pathlib import Path
import pyarrow as pa
from nlakit import dataset as ds
from nlakit.meta import read_dataset_meta, write_dataset_meta
srcs = [Path("runs/smollm2-L20/ar_adapt3_train/train"), Path("runs/smollm2-L20/ei_best8_448")]
tables = [ds.read_table(s) for s in srcs]
cols = [c for c in tables[0].column_names if all(c in t.column_names for t in tables)]
table = pa.concat_tables([t.select(cols) for t in tables])
metas = [read_dataset_meta(s) for s in srcs]
out = Path("runs/smollm2-L20/ar_quote_train")
out.mkdir(parents=True, exist_ok=True)
ds.write_parquet(out / ds.part_name(0), table)
meta = replace(metas[0], dataset_id="+".join(m.dataset_id for m in metas), row_count=table.num_rows,
               parent_datasets=[m.dataset_id for m in metas], created_at=None)
write_dataset_meta(out, meta)  # last: its presence marks the step done
PY
# 2. the AR, from the shipped one, learning the new reading (the AV is the shipped one, copied alongside)
mkdir -p $OUT
[ -d $OUT/av ] || cp -r $V4/av $OUT/av
$NLA train ar --config recipes/smollm2-L20/ar_quote.yaml
# 3. held out: the shipped AV's greedy text read by the new AR, and by v4's AR (the one shipped before) alongside
recipes/smollm2-L20/eval.sh $OUT $V4 reports/smollm2-135m-L20/v5q
