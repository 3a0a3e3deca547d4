#!/usr/bin/env bash
# v6 candidate: the AV trained afresh on every training pair of the grounded teacher (one epoch, LoRA), validated
# through v5's AR, which reads the teacher's wiki test text at 0.664 without having trained on it (its quote template
# re-reads the quoted words). The shipped AV saw 4,800 pairs of v1's teacher format; this one sees 25,085 pairs, 3
# positions per document: every wiki document of v1's train split (recipes/smollm2-L20/splits) plus chat, news and
# instructions written from seed-0 prompts and seed-0 blocks of rich's source, minus the documents whose prompt is
# one of the held-out chat set's (eval.sh's chat_fresh, seed 2). Fiction and reviews stay out: they are the unseen
# registers. Seed 0 is also the seed of ar_adapt.sh's chat/code corpus, so v6 trained on documents of its test part
# (eval.sh's chat_heldout and code_heldout): ar_v6.sh refuses to run where that split exists. The validation
# documents are split from the training ones by document, not by prompt: 8 of the 38 synthetic ones share their
# prompt with a training document.
# Every stage resumes or skips finished work, so run the script again after an interruption:
#     nohup nice -n 5 recipes/smollm2-L20/av_v6.sh > runs/smollm2-L20/av_v6.log 2>&1 &
set -euo pipefail
NLA=${NLA:-.venv/bin/nla}
R=runs/smollm2-L20
# v5, the package's NLA at 207a29f, whose AR validates (a later package may hold another AR)
V5=$R/nla_v5
[ -d $V5/ar ] || { mkdir -p $V5 && git archive 207a29f src/nlakit/assets/nla/smollm2-135m-L20 | tar -x --strip-components=5 -C $V5; }
OUT=$R/nla_v6
mkdir -p $R
# 1. corpora: the training registers (seed 0), then one training and one validation corpus file
[ -f $R/synth_v6.jsonl ] || $NLA synth --out $R/synth_v6.jsonl --registers chat,news,instructions,code \
    --docs-per-register 100 --seed 0 --dtype float32
[ -f $R/synth_chat_s2.jsonl ] || $NLA synth --out $R/synth_chat_s2.jsonl --registers chat --docs-per-register 40 \
    --seed 2 --dtype float32
[ -f $R/v6_val.jsonl ] || .venv/bin/python - <<'PY'
import json, random
from nlakit.corpus import load_corpus
R, S = "runs/smollm2-L20", "recipes/smollm2-L20/splits"
docs = {d.id: d.text for d in load_corpus("wiki")}
held = {json.loads(line)["prompt"] for line in open(f"{R}/synth_chat_s2.jsonl", encoding="utf-8")}
synth = [r for r in map(json.loads, open(f"{R}/synth_v6.jsonl", encoding="utf-8")) if r.get("prompt") not in held]
rng = random.Random(0)
rng.shuffle(synth)
n_val = len(synth) // 10  # a tenth of the synthetic documents validate
wiki = {s: sorted(open(f"{S}/wiki_{s}.txt", encoding="utf-8").read().splitlines()) for s in ("train", "val")}
train = [{"id": i, "text": docs[i]} for i in wiki["train"]] + synth[n_val:]
val = [{"id": i, "text": docs[i]} for i in rng.sample(wiki["val"], 80)] + synth[:n_val]
for name, rows in (("train", train), ("val", val)):
    random.Random(1).shuffle(rows)  # mixed registers from the first validation row on
    with open(f"{R}/v6_{name}.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
PY
# 2. activations, 3 positions per document, then the grounded teacher's text
for s in train val; do
    $NLA extract --model smollm2-135m --layer 20 --corpus $R/v6_$s.jsonl --positions-per-doc 3 --dtype float32 \
        --out $R/v6_acts_$s
    $NLA datagen $R/v6_acts_$s --out $R/v6_teach_$s
done
# 3. the AV, one epoch over every pair, validated through v5's AR (copied to out/ar)
mkdir -p $OUT
[ -d $OUT/ar ] || cp -r $V5/ar $OUT/ar
[ -f $OUT/nla_meta.yaml ] || cp $V5/nla_meta.yaml $OUT/nla_meta.yaml
$NLA train av --config recipes/smollm2-L20/av_v6.yaml
