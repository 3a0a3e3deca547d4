#!/usr/bin/env bash
# Held-out evaluation of an NLA for SmolLM2-135M layer 20, with another NLA's AR reading the same explanations
# (--compare-ar), so the two columns differ only by the AR. Sets (document-level; no shipped NLA trained on them):
#   wiki_test:        documents of v1's test split (ids in splits/wiki_test.txt, from wiki_split_ids.py), 300
#                     positions; the retrieval baseline and the nearest-vector oracle need the split's train
#                     activations (runs/smollm2-L20/v1_split/train, else av_v6.sh's v6_acts_train, which also holds
#                     fp32-extracted rows of other registers) and are left out where both are missing
#   fiction_reviews:  24 fiction + 23 review documents written from seed-1 prompts (120 positions): registers no NLA
#                     trained on
#   chat_fresh:       40 chat conversations written from seed-2 prompts (120 positions): documents no NLA trained on,
#                     in a register the ARs of v2-v5 did train on; regenerated on a fresh clone
#   chat_heldout:     the chat documents of the chat/code split's test part (the ARs adapted on its train part)
#   code_heldout:     the code documents of that test part
# A finished report is skipped, so the script resumes where it stopped.
# Usage: recipes/smollm2-L20/eval.sh NLA_FOLDER COMPARE_AR_NLA REPORT_FOLDER [nla eval options...]
#   v2: eval.sh runs/smollm2-L20/nla_v2 runs/smollm2-L20/nla_v1 reports/smollm2-135m-L20/v2
#   v3: eval.sh runs/smollm2-L20/nla_v3 runs/smollm2-L20/nla_v2 reports/smollm2-135m-L20/v3
#   v4: eval.sh runs/smollm2-L20/nla_v3e2 runs/smollm2-L20/nla_v3 reports/smollm2-135m-L20/v4
#   GPU RL candidate: eval.sh runs/smollm2-L20/gpu_rl_s7/nla src/nlakit/assets/nla/smollm2-135m-L20 reports/smollm2-135m-L20/v4rl
#     (v3 shipped in the package at the time)
#   v4, best of 8 (AR-picked; v1's AR, the most distant reader, checks the pick):
#     eval.sh src/nlakit/assets/nla/smollm2-135m-L20 runs/smollm2-L20/nla_v1 reports/smollm2-135m-L20/v4best8 --best-of 8
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 NLA_FOLDER COMPARE_AR_NLA REPORT_FOLDER [nla eval options...]" >&2; exit 2; }
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
SRC=$1 CMP=$2 OUT=$3
shift 3
EXTRA=("$@")
# 120 tokens: the cap every committed report used (nla eval now defaults to the AV's training cap, 110 here)
run() { $NLA eval --nla $SRC --compare-ar $CMP --max-positions 300 --max-new-tokens 120 "${EXTRA[@]}" "$@"; }
TRAIN=(); [ -d $R/v1_split/train ] && TRAIN=(--train-data $R/v1_split/train)
# av_v6.sh's training activations hold every document of the same wiki train split (and other registers)
[ -z "${TRAIN[*]}" ] && [ -d $R/v6_acts_train ] && TRAIN=(--train-data $R/v6_acts_train)
[ -f $OUT/wiki_test/report.md ] || run --corpus wiki --docs-from recipes/smollm2-L20/splits/wiki_test.txt "${TRAIN[@]}" \
    --out $OUT/wiki_test
[ -f $R/synth_heldout.jsonl ] || $NLA synth --out $R/synth_heldout.jsonl --registers fiction,reviews --docs-per-register 24 --seed 1 --dtype float32
[ -f $OUT/fiction_reviews/report.md ] || run --texts $R/synth_heldout.jsonl --max-positions 120 --out $OUT/fiction_reviews
[ -f $R/synth_chat_s2.jsonl ] || $NLA synth --out $R/synth_chat_s2.jsonl --registers chat --docs-per-register 40 --seed 2 --dtype float32
[ -f $OUT/chat_fresh/report.md ] || run --texts $R/synth_chat_s2.jsonl --max-positions 120 --positions-per-doc 3 --out $OUT/chat_fresh
# the chat and the code documents of the chat/code test split (ar_adapt.sh writes it), as corpus files
[ -f $R/cc_split/test/nla_meta.yaml ] || { echo "no $R/cc_split: run ar_adapt.sh for the chat and code sets" >&2; exit 0; }
[ -f $R/code_heldout.jsonl ] || .venv/bin/python - <<'PY'
import json
import pyarrow.parquet as pq
R = "runs/smollm2-L20"
ids = set(pq.read_table(f"{R}/cc_split/test/part-00000.parquet", columns=["doc_id"]).column("doc_id").to_pylist())
rows = [r for r in map(json.loads, open(f"{R}/synth_cc.jsonl", encoding="utf-8")) if r["id"] in ids]
for register in ("chat", "code"):
    with open(f"{R}/{register}_heldout.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["register"] == register)
PY
[ -f $OUT/chat_heldout/report.md ] || run --texts $R/chat_heldout.jsonl --positions-per-doc 5 --out $OUT/chat_heldout
[ -f $OUT/code_heldout/report.md ] || run --texts $R/code_heldout.jsonl --positions-per-doc 5 --out $OUT/code_heldout
