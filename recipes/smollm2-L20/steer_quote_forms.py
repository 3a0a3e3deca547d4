"""Steering edit forms for the grounded format, with eval's protocol (the setting is chosen on the 8 development
cases, then read on the 8 test cases and the rhyme). Session 18, on v6b: eval's grounded `replace` then edited the
topic and the predicted words but kept the quoted recent words, which v5's AR (and so v6b's) re-reads at its end,
and it won 2/9 test cases against v5's 6/9. Forms (the first is that old edit; eval's `replace` is now `quote_end`):
- `topic_pred`: the topic and the predicted next words become the word;
- `quote`: that, and the topic words inside the quoted recent words become the word ("the lion, is the lion the" ->
  "the dog, is the dog the");
- `quote_word`: that, with the quoted recent words replaced by the word alone (as free-form `replace` does);
- `quote_end`: that, with the word appended to the quoted recent words.
Usage: .venv/bin/python recipes/smollm2-L20/steer_quote_forms.py NLA_FOLDER OUT.json"""

import json
import re
import sys

import nlakit.eval as ev
from nlakit.config import EvalConfig
from nlakit.io import atomic_write_text
from nlakit.nla import NLA

EVAL_EDIT = ev.edit_toward  # eval's own edit, for the free-form text (before `variant` replaces it below)


def lines_edited(expl: str, word: str, quote) -> str:
    out = []
    for ln in expl.split("\n"):
        if ln.startswith("Predicted next:"):
            ln = f'Predicted next: "{word}".'
        elif ln.startswith("Recent words:"):
            m = re.match(r'Recent words: "(.*)"', ln)
            ln = f'Recent words: "{quote(m.group(1) if m else "")}".'
        elif " about " in ln and ln.endswith(".") and not ln.startswith("Current"):
            ln = ln.split(" about ", 1)[0] + f" about {word}."
        out.append(ln)
    return "\n".join(out)


def topic_words(expl: str) -> list[str]:
    for ln in expl.split("\n"):
        if " about " in ln and ln.endswith(".") and not ln.startswith(("Recent", "Current", "Predicted")):
            body = ln.split(" about ", 1)[1].rstrip(".")
            return [w.strip() for w in re.split(r",| and | or ", body) if len(w.strip()) > 2]
    return []


def variant(expl: str, word: str, form: str = "quote_word") -> str:
    if not any(ln.startswith("Predicted next:") for ln in expl.split("\n")):  # eval's test for the format
        return EVAL_EDIT(expl, word, "replace")
    if form == "topic_pred":
        return lines_edited(expl, word, lambda q: q)
    if form == "quote":
        words = sorted(set(topic_words(expl)), key=len, reverse=True)
        pat = re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\w*", re.I) if words else None
        return lines_edited(expl, word, lambda q: pat.sub(word, q) if pat else q)
    if form == "quote_word":
        return lines_edited(expl, word, lambda q: word)
    if form == "quote_end":
        return lines_edited(expl, word, lambda q: f"{q} {word}")
    raise ValueError(form)


ev.edit_toward = variant
ev.EDIT_FORMS = ("topic_pred", "quote", "quote_word", "quote_end")
nla = NLA.from_pretrained(sys.argv[1], dtype="auto")
r = ev.steering_suite(nla, EvalConfig(out="-", max_new_tokens=120, steer_alphas=(0.1, 0.25, 0.5, 1.0)))
summary = {
    "chosen": r["best"],
    "dev": {k: f"{v['wins']}/{v['n']} {v['shift_mean']:.2f}" for k, v in r["dev"].items()},
    "test": {k: f"{v['wins']}/{v['n']} {v['shift_mean']:.2f}" for k, v in r["sweep"].items()},
    "rhyme": {
        k: (v["cases"][-1]["win"], round(v["cases"][-1]["shift"], 2), v["cases"][-1]["top_token_steered"])
        for k, v in r["sweep"].items()
    },
    "edits_of_case_1": {f: r["sweep"][f + "@0.25"]["cases"][0]["edited"] for f in ev.EDIT_FORMS},
}
print(json.dumps(summary, indent=1))
atomic_write_text(sys.argv[2], json.dumps({**summary, "full": r}, indent=1) + "\n")
