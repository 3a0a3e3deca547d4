#!/usr/bin/env bash
# Held-out evaluation of the v3 candidate (v2 + AR adapted on news and instructions; same AV), with v2's AR reading
# the same explanations (--compare-ar): first the two sets that decide whether it ships, wiki test (v1's test split,
# 300 positions) and fiction + reviews (registers no NLA trained on, 120 positions), then chat and code test
# documents. A finished report is skipped, so the script resumes. See eval_v2.sh for the sets.
# Usage: recipes/smollm2-L20/eval_v3.sh [REPORT_FOLDER]
set -euo pipefail
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
OUT=${1:-reports/smollm2-135m-L20/v3}
[ -f $R/nla_v3/av/nla_meta.yaml ] || cp -r $R/nla_v2/av $R/nla_v3/av
[ -f $R/nla_v3/nla_meta.yaml ] || cp $R/nla_v2/nla_meta.yaml $R/nla_v3/
run() { $NLA eval --nla $R/nla_v3 --compare-ar $R/nla_v2 --max-positions 300 "$@"; }
[ -f $OUT/fiction_reviews/report.md ] || run --texts $R/synth_heldout.jsonl --max-positions 120 --out $OUT/fiction_reviews
[ -f $OUT/wiki_test/report.md ] || run --corpus wiki --docs-from $R/v1_split/test --train-data $R/v1_split/train --out $OUT/wiki_test
[ -f $OUT/chat_heldout/report.md ] || run --texts $R/chat_heldout.jsonl --positions-per-doc 5 --out $OUT/chat_heldout
[ -f $OUT/code_heldout/report.md ] || run --texts $R/code_heldout.jsonl --positions-per-doc 5 --out $OUT/code_heldout
