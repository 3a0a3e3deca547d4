#!/usr/bin/env bash
# v6 candidate, second half: v5's AR adapted to the v6 AV's (av_v6.sh) own greedy text (as v2-v5 adapted theirs),
# then the held-out eval of that pair; its --compare-ar column reads the same text through v5's unadapted AR (av_v6.sh
# copied it to nla_v6). Every stage resumes or skips finished work, so run the script again after an interruption:
#     nohup nice -n 5 recipes/smollm2-L20/ar_v6.sh > runs/smollm2-L20/ar_v6.log 2>&1 &
set -euo pipefail
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
# v5, the package's NLA at 207a29f: where the adapted AR starts (a later package may hold another AR)
V5=$R/nla_v5
[ -d $V5/ar ] || { mkdir -p $V5 && git archive 207a29f src/nlakit/assets/nla/smollm2-135m-L20 | tar -x --strip-components=5 -C $V5; }
AV6=$R/nla_v6    # the v6 AV with v5's AR (av_v6.sh)
OUT=$R/nla_v6r   # the v6 AV with the adapted AR
[ -f $AV6/av/nla_meta.yaml ] || { echo "run av_v6.sh to the end first" >&2; exit 2; }
[ ! -d $R/cc_split ] || { echo "v6 trained on documents of $R/cc_split/test (seed-0 chat and code): move it aside so that eval.sh does not score them" >&2; exit 2; }
# 1. the v6 AV's greedy text on 3,072 training rows (mixed registers, shuffled by document) and on the val rows
$NLA datagen $R/v6_acts_train --provider nla --model $AV6 --max-rows 3072 --out $R/v6_avtext_train
$NLA datagen $R/v6_acts_val --provider nla --model $AV6 --out $R/v6_avtext_val
# 2. v5's AR adapted to that text (the v6 AV copied alongside)
mkdir -p $OUT
[ -d $OUT/av ] || cp -r $AV6/av $OUT/av
$NLA train ar --config recipes/smollm2-L20/ar_v6.yaml
recipes/smollm2-L20/eval.sh $OUT $AV6 reports/smollm2-135m-L20/v6
