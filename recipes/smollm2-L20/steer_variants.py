"""Steering edit forms beyond eval's two, on the shipped NLA, with eval's protocol (the setting is chosen on the 8
development cases, then read on the 8 test cases and the rhyme). Session 13: does replacing the topic words as well
as the quotes help? Usage:
    .venv/bin/python recipes/smollm2-L20/steer_variants.py reports/smollm2-135m-L20/v5best8/steering_topic.json
- `topic`: eval's `replace` (every quoted span becomes the word) and the topic list ("the subject is X, Y and Z")
  becomes "word, word and word";
- `topic_only`: the topic list alone, the quotes kept."""

import json
import re
import sys

import nlakit.eval as ev
from nlakit.config import EvalConfig
from nlakit.io import atomic_write_text
from nlakit.nla import NLA

orig_edit = ev.edit_toward
TOPIC = re.compile(r"((?:the subject is|prose on|passage on|text on|about) )([^.;\n]+)([.;])")


def topic(expl, word):
    return TOPIC.sub(lambda m: f"{m.group(1)}{word}, {word} and {word}{m.group(3)}", expl, count=1)


def variant(expl, word, form="replace"):
    if form in ("replace", "append"):
        return orig_edit(expl, word, form)
    if form == "topic":
        return topic(orig_edit(expl, word, "replace"), word)
    if form == "topic_only":
        return topic(expl, word)
    raise ValueError(form)


ev.edit_toward = variant
ev.EDIT_FORMS = ("replace", "append", "topic", "topic_only")
nla = NLA.from_pretrained("smollm2-135m-L20", dtype="auto")
r = ev.steering_suite(nla, EvalConfig(out="-", steer_alphas=(0.1, 0.25, 0.5, 1.0)))
summary = {
    "chosen": r["best"],
    "dev": {k: f"{v['wins']}/{v['n']} {v['shift_mean']:.2f}" for k, v in r["dev"].items()},
    "test": {k: f"{v['wins']}/{v['n']} {v['shift_mean']:.2f}" for k, v in r["sweep"].items()},
    "rhyme": {
        k: (v["cases"][-1]["win"], round(v["cases"][-1]["shift"], 2), v["cases"][-1]["top_token_steered"])
        for k, v in r["sweep"].items()
    },
}
print(json.dumps(summary, indent=1))
atomic_write_text(sys.argv[1], json.dumps({**summary, "full": r}, indent=1))
