#!/usr/bin/env bash
# v2: adapt v1's AR to the text v1's AV actually writes (greedy), on wiki + chat + code. The AV is unchanged.
# Data (document-level, seed 42): 432 wiki rows (1.8% of v1's training documents) + 475 chat/code rows (40% of their
# documents); validation: 90 wiki val rows + 120 chat/code val rows. Resumable: rerun after an interruption.
set -euo pipefail
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
$NLA split $R/v1_split/train --out $R/wiki_sub --fractions 0.1,0,0.9 --seed 42
$NLA split $R/wiki_sub/train --out $R/wiki_sub4 --fractions 0.4,0,0.6 --seed 42
$NLA split $R/cc_split/train --out $R/cc_half --fractions 0.5,0,0.5 --seed 42
$NLA split $R/wiki_sub4/train --out $R/wiki_sub2 --fractions 0.45,0,0.55 --seed 42
$NLA split $R/wiki_sub2/train $R/cc_half/train --out $R/ar_adapt_src2 --fractions 1,0,0 --seed 42
$NLA split $R/v1_split/val --out $R/wiki_val3 --fractions 0.03,0,0.97 --seed 42
$NLA split $R/wiki_val3/train $R/cc_split/val --out $R/ar_adapt_val_src --fractions 1,0,0 --seed 42
$NLA datagen $R/ar_adapt_val_src/train --provider nla --model $R/nla_v1 --out $R/ar_adapt_val
$NLA datagen $R/ar_adapt_src2/train --provider nla --model $R/nla_v1 --out $R/ar_adapt_train
$NLA train ar --config recipes/smollm2-L20/ar_adapt.yaml
