"""The offline, free default explainer: what the target itself shows at a position, in one fixed format.

    Prose about Chechnya, Russia and republic.
    Recent words: "is a republic of Russia in".
    Current token: "in", a preposition.
    Predicted next: "the", "southern", "North" or "Eastern".

1. register and topic: the register from surface cues (chat turns are exact) and the three most topical words
   (tf-idf against the wiki corpus, weighted toward recent words);
2. the last six whole words of the context (never a sub-word fragment);
3. the final token and its role;
4. the target's own top next-token predictions, read from its logits there.

The wording is fixed and every field is a function of the context: the AV can learn all of it from the vector,
and no SFT capacity goes to imitating seeded noise. Contexts that are prefixes of one another (positions of one
document) share a forward pass.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable

import torch

from nlakit.batch import right_pad
from nlakit.explainers.base import Explainer
from nlakit.models import load_causal_lm, load_tokenizer

# the format's four lines, in order; "topic" is the first line, register and topic ("Prose about ...")
LINES = ("topic", "recent words", "current token", "predicted next")
_PREFIXES = {"Recent words:": "recent words", "Current token:": "current token", "Predicted next:": "predicted next"}


def is_grounded(text: str) -> bool:
    """Whether an explanation is in this format (an AV trained on it writes it too): it has the prediction line."""
    return any(ln.startswith("Predicted next:") for ln in text.split("\n"))


def line_kind(line: str) -> str | None:
    """Which of `LINES` a line of this format is, by its prefix (None for a line the format does not have), so an
    AV's text that drops or reorders a line is still read claim by claim."""
    for prefix, kind in _PREFIXES.items():
        if line.startswith(prefix):
            return kind
    return "topic" if " about " in line else None


STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been being it its this that these
    those he she they them his her their we our you your i me my not no so than then there here which who whom whose
    what when where why how all any each both few more most other some such only own same too very can will just
    also into over after before between during under about against through above below up down out off again further
    once has have had do does did would could should may might must shall one two three s t new first last many
    known called became become including used use well while within although however since until among""".split()
)
DETERMINERS = frozenset("a an the this that these those his her its their our my your some any each every no".split())
PREPOSITIONS = frozenset(
    "of to in on at by for with from into over under about between during through against as than like via".split()
)
CONJUNCTIONS = frozenset("and or but nor yet so while although because since unless whereas".split())
RELATIVES = frozenset("that which who whom whose where when".split())
AUXILIARIES = frozenset("is are was were be been being has have had do does did will would can could may might".split())
PRONOUNS = frozenset("he she it they we you i him her them us".split())

# chat-template markers are structure, not words: they set the register and are dropped from quotes and keywords
_CHAT_TURN = re.compile(r"<\|im_start\|>(\w+)\n?")
_SPECIAL = re.compile(r"<\|[^|>]{1,40}\|>")
QUOTE_WORDS = 6
TOP_K = 4


def register_of(text: str) -> str:
    """A coarse register label from surface cues; chat is exact (the template's turn markers)."""
    turns = _CHAT_TURN.findall(text)
    if turns:
        return {"user": "Chat, the user writing", "assistant": "Chat, the assistant replying"}.get(
            turns[-1], "Chat, the system prompt"
        )
    if re.search(r"^\s*(def |class |import |from \w+ import|return\b|self\.)|[{};]\s*$|=>", text, re.M):
        return "Source code"
    if re.search(r"(^|\n)\s*([-*\u2022]|\d+[.)]|Step \d+)\s", text):
        return "A list of steps or items"
    if re.search(r"[\"\u201c][^\"\u201d]{2,}[\"\u201d],? (said|asked|replied|whispered|shouted)", text):
        return "A story with dialogue"
    return "Prose"


def plain_text(context: str) -> str:
    """The context without chat-template markers (turn names become line breaks)."""
    return _SPECIAL.sub(" ", _CHAT_TURN.sub("\n", context))


@functools.lru_cache(maxsize=1)
def word_idf() -> dict[str, float]:
    """Inverse document frequency of lower-cased words over the embedded wiki corpus: rare words name topics."""
    from nlakit.corpus import load_corpus

    docs = load_corpus("wiki")
    df: Counter[str] = Counter()
    for d in docs:
        df.update({w.lower() for w in _WORDS.findall(d.text)})
    n = len(docs)
    return {w: math.log((n + 1) / (c + 1)) for w, c in df.items()}


_WORDS = re.compile(r"[^\W\d_][\w\-']{2,}")


def keywords(text: str, k: int = 3) -> list[str]:
    """The k most topical words: tf-idf (wiki idf) weighted toward recent words; capitalisation kept as written.
    Ties keep the later word (closer to the position the vector was read at)."""
    idf = word_idf()
    top_idf = math.log(len(idf) + 1)
    words = _WORDS.findall(text)
    score: dict[str, float] = {}
    first: dict[str, str] = {}
    for i, w in enumerate(words):
        low = w.lower()
        if low in STOPWORDS:
            continue
        recency = 0.5 + 0.5 * (i + 1) / len(words)
        score[low] = score.get(low, 0.0) + recency * idf.get(low, top_idf)
        first.setdefault(low, w)
    ranked = sorted(score, key=lambda w: -score[w])
    return [first[w] for w in ranked[:k]]


def token_role(token: str, previous: str) -> str:
    t = token.strip()
    low = t.lower()
    if not t:
        return "a line break" if "\n" in token else "a space"
    if t in ",;:":
        return "punctuation inside a sentence"
    if t in ".!?":
        return "the end of a sentence"
    if t in "([{\"'\u201c\u2018":
        return "an opening bracket or quote"
    if t in ")]}\"'\u201d\u2019":
        return "a closing bracket or quote"
    if t.isdigit():
        return "part of a number"
    if not token.startswith(" ") and previous[-1:].isalnum():
        return "the end of a longer word"
    if low in DETERMINERS:
        return "a determiner before a noun"
    if low in PREPOSITIONS:
        return "a preposition"
    if low in CONJUNCTIONS:
        return "a conjunction"
    if low in RELATIVES:
        return "a word opening a clause"
    if low in AUXILIARIES:
        return "a linking verb"
    if low in PRONOUNS:
        return "a pronoun"
    if t[:1].isupper():
        return "a capitalised word"
    if low.endswith("ed") or low.endswith("ing"):
        return "a verb form"
    return "a content word"


class GroundedExplainer(Explainer):
    name = "grounded"

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        top_k: int = TOP_K,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 16,
        max_tokens: int | None = None,
    ):
        super().__init__()
        self.model_name, self.top_k = model, top_k
        self.device, self.dtype, self.batch_size, self.max_tokens = device, dtype, batch_size, max_tokens
        self._model = None
        self.tok = load_tokenizer(model)

    def settings(self) -> dict:
        return {"provider": self.name, "model": self.model_name, "top_k": self.top_k, "format": "v2"}

    @property
    def model(self):
        if self._model is None:
            self._model = load_causal_lm(self.model_name, device=self.device, dtype=self.dtype)
        return self._model

    def _groups(self, ids: list[list[int]]) -> list[tuple[int, list[int]]]:
        """(anchor row, member rows): members' ids are prefixes of the anchor's, so one forward serves them all."""
        order = sorted(range(len(ids)), key=lambda i: ids[i], reverse=True)
        groups: list[tuple[int, list[int]]] = []
        for i in order:
            if groups:
                anchor = ids[groups[-1][0]]
                if len(ids[i]) <= len(anchor) and anchor[: len(ids[i])] == ids[i]:
                    groups[-1][1].append(i)
                    continue
            groups.append((i, [i]))
        return groups

    @torch.inference_mode()
    def top_predictions(self, contexts: list[str], progress: Callable[[int], None] | None = None) -> list[list[int]]:
        """The target's top-k next-token ids after each context (its argmax first)."""
        # contexts are the extraction's (already truncated) prefixes; truncating again would read the wrong position
        trunc = {"truncation": True, "max_length": self.max_tokens} if self.max_tokens else {}
        ids = [self.tok(c, add_special_tokens=True, **trunc)["input_ids"] for c in contexts]
        groups = self._groups(ids)
        groups.sort(key=lambda g: len(ids[g[0]]))
        out: list[list[int]] = [[] for _ in contexts]
        for b in range(0, len(groups), self.batch_size):
            batch = groups[b : b + self.batch_size]
            x, mask = right_pad([ids[a] for a, _ in batch], self.tok.pad_token_id)
            # the LM head only where a prediction is read (a 49k-wide head over every position is most of the cost)
            hidden = self.model.get_decoder()(input_ids=x.to(self.device), attention_mask=mask.to(self.device))
            rows = [(r, i) for r, (_, members) in enumerate(batch) for i in members]
            picked = hidden.last_hidden_state[[r for r, _ in rows], [len(ids[i]) - 1 for _, i in rows]]
            top = self.model.get_output_embeddings()(picked).float().topk(self.top_k).indices.tolist()
            for (_, i), t in zip(rows, top, strict=True):
                out[i] = t
            if progress:
                progress(sum(len(m) for _, m in batch))
        return out

    def compose(self, context: str, predictions: list[int]) -> str:
        ctx_ids = self.tok(context, add_special_tokens=False)["input_ids"]
        token = self.tok.decode(ctx_ids[-1:]) if ctx_ids else context[-1:]
        previous = self.tok.decode(ctx_ids[-2:-1]) if len(ctx_ids) > 1 else ""
        text = plain_text(context)
        kws = keywords(text)
        topic = ", ".join(kws[:-1]) + f" and {kws[-1]}" if len(kws) > 1 else (kws[0] if kws else "no clear topic")
        quote = " ".join(text.split()[-QUOTE_WORDS:])
        shown = token.strip() or token.replace("\n", "\\n")
        preds = [self.tok.decode([p]).strip() or self.tok.decode([p]).replace("\n", "\\n") for p in predictions]
        listed = ", ".join(f'"{p}"' for p in preds[:-1]) + f' or "{preds[-1]}"' if len(preds) > 1 else f'"{preds[0]}"'
        return (
            f"{register_of(context)} about {topic}.\n"
            f'Recent words: "{quote}".\n'
            f'Current token: "{shown}", {token_role(token, previous)}.\n'
            f"Predicted next: {listed}."
        )

    def explain(self, contexts: list[str], progress: Callable[[int], None] | None = None) -> list[str | None]:
        preds = self.top_predictions(contexts, progress)
        out = []
        for c, p in zip(contexts, preds, strict=True):
            if c.strip():
                out.append(self.compose(c, p))
                self._count("explained")
            else:
                out.append(None)
                self._count("dropped_empty")
        return out
