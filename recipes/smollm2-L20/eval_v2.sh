#!/usr/bin/env bash
# Held-out evaluation of the v2 NLA, with v1's AR reading the same explanations (--compare-ar): v2 keeps v1's AV, so
# v1 on these rows is exactly that line. Sets (document-level; none was trained on by v1 or v2):
#   wiki_test:        documents of v1's test split, 300 positions
#   chat_heldout:     the chat documents of the chat/code split's test part (v2's AR adapted on its train part)
#   code_heldout:     the code documents of that test part
#   fiction_reviews:  24 fiction + 23 review documents written from seed-1 prompts (120 positions): registers neither
#                     NLA trained on
# Usage: recipes/smollm2-L20/eval_v2.sh [NLA_FOLDER] [REPORT_FOLDER]
set -euo pipefail
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
SRC=${1:-$R/nla_v2}
OUT=${2:-reports/smollm2-135m-L20/v2}
[ -f $R/synth_heldout.jsonl ] || $NLA synth --out $R/synth_heldout.jsonl --registers fiction,reviews --docs-per-register 24 --seed 1 --dtype float32
# the chat and the code documents of the chat/code test split, as corpus files
.venv/bin/python - <<'PY'
import json
import pyarrow.parquet as pq
R = "runs/smollm2-L20"
ids = set(pq.read_table(f"{R}/cc_split/test/part-00000.parquet", columns=["doc_id"]).column("doc_id").to_pylist())
rows = [r for r in map(json.loads, open(f"{R}/synth_cc.jsonl", encoding="utf-8")) if r["id"] in ids]
for register in ("chat", "code"):
    with open(f"{R}/{register}_heldout.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["register"] == register)
PY
run() { $NLA eval --nla $SRC --compare-ar $R/nla_v1 --max-positions 300 "$@"; }
run --corpus wiki --docs-from $R/v1_split/test --train-data $R/v1_split/train --out $OUT/wiki_test
run --texts $R/chat_heldout.jsonl --positions-per-doc 5 --out $OUT/chat_heldout
run --texts $R/synth_heldout.jsonl --max-positions 120 --out $OUT/fiction_reviews
run --texts $R/code_heldout.jsonl --positions-per-doc 5 --out $OUT/code_heldout
