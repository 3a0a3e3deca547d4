"""The offline, free default explainer: 2-3 features written from the context and from the target model itself.

1. genre and topic: keywords of the context and register cues (list, code, dialogue, numbers, formal prose);
2. the phrase in progress, with a short quote;
3. the final token's role, and the target's own top next-token predictions read from its logits there.

Wording comes from seeded templates keyed by the context, so the same row always gets the same text while the AV
does not learn one fixed sentence. Contexts that are prefixes of one another (positions of one document) share a
forward pass.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable

import torch

from nlakit.explainers.base import Explainer
from nlakit.models import load_causal_lm, load_tokenizer

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

TOPIC = (
    "{Register} about {topic}.",
    "The text is {register} on {topic}.",
    "Genre: {register}; the subject is {topic}.",
    "This reads as {register} discussing {topic}.",
)
PHRASE = (
    'The phrase in progress is "{quote}".',
    'It is in the middle of the phrase "{quote}".',
    'The current clause reads "{quote}".',
    'Most recent words: "{quote}".',
)
FINAL = (
    'The final token "{token}" is {role}; the model expects {preds} next.',
    'Last token: "{token}", {role}. Likely continuations: {preds}.',
    'It ends on "{token}", {role}, and predicts {preds} to follow.',
    'The sequence stops at "{token}" ({role}); top next-token guesses are {preds}.',
)


def register_of(text: str) -> str:
    """A coarse register label from surface cues."""
    if re.search(r"[{};]\s*$|\bdef |\breturn\b|=>|\)\s*\{", text):
        return "piece of source code"
    if re.search(r"(^|\n)\s*([-*•]|\d+[.)])\s", text):
        return "list"
    if text.count('"') >= 2 or re.search(r"(^|\n)\w+:\s", text):
        return "passage with dialogue or quotation"
    if len(re.findall(r"\d", text)) > max(8, len(text) // 25):
        return "fact-dense passage full of dates and figures"
    return "encyclopedic passage in formal expository prose"


def keywords(text: str, k: int = 3) -> list[str]:
    """Most frequent content words, earlier first among ties; capitalised names kept as written."""
    words = re.findall(r"[^\W\d_][\w\-']{2,}", text)
    counts = Counter(w.lower() for w in words if w.lower() not in STOPWORDS)
    first: dict[str, str] = {}
    for w in words:
        first.setdefault(w.lower(), w)
    ranked = sorted(counts, key=lambda w: (-counts[w], text.lower().find(w)))
    return [first[w] for w in ranked[:k]]


def token_role(token: str, previous: str) -> str:
    t = token.strip()
    low = t.lower()
    if not t:
        return "whitespace, a break before new text"
    if t in ",;:":
        return "punctuation that continues the sentence"
    if t in ".!?":
        return "end-of-sentence punctuation, so a new sentence starts"
    if t in "([{\"'“‘":
        return "an opening bracket or quote that must be closed"
    if t in ")]}\"'”’":
        return "a closing bracket or quote"
    if t.isdigit():
        return "part of a number or date"
    if not token.startswith(" ") and previous[-1:].isalnum():
        return "a word fragment completing the previous word"
    if low in DETERMINERS:
        return "a determiner, so a noun phrase should follow"
    if low in PREPOSITIONS:
        return "a preposition that needs its object"
    if low in CONJUNCTIONS:
        return "a conjunction joining two parts"
    if low in RELATIVES:
        return "a relative word opening a clause"
    if low in AUXILIARIES:
        return "an auxiliary or linking verb awaiting its complement"
    if low in PRONOUNS:
        return "a pronoun, likely followed by a verb"
    if t[:1].isupper():
        return "a capitalised word, likely part of a name"
    if low.endswith("ed") or low.endswith("ing"):
        return "a verb form"
    return "a content word"


def _quote(words: list[str], n: int) -> str:
    return " ".join(words[-n:]).strip()


class GroundedExplainer(Explainer):
    name = "grounded"

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        seed: int = 0,
        top_k: int = 3,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 16,
        max_tokens: int | None = None,
    ):
        super().__init__()
        self.model_name, self.seed, self.top_k = model, seed, top_k
        self.device, self.dtype, self.batch_size, self.max_tokens = device, dtype, batch_size, max_tokens
        self._model = None
        self.tok = load_tokenizer(model)

    def settings(self) -> dict:
        return {
            "provider": self.name,
            "model": self.model_name,
            "seed": self.seed,
            "top_k": self.top_k,
            "templates": len(TOPIC) * len(PHRASE) * len(FINAL),
        }

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
            width = max(len(ids[a]) for a, _ in batch)
            x = torch.full((len(batch), width), self.tok.pad_token_id)
            mask = torch.zeros_like(x)
            for r, (a, _) in enumerate(batch):
                x[r, : len(ids[a])] = torch.tensor(ids[a])
                mask[r, : len(ids[a])] = 1
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
        rng = random.Random(int.from_bytes(hashlib.sha256(f"{self.seed}|{context}".encode()).digest()[:8], "big"))
        ctx_ids = self.tok(context, add_special_tokens=False)["input_ids"]
        token = self.tok.decode(ctx_ids[-1:]) if ctx_ids else context[-1:]
        previous = self.tok.decode(ctx_ids[-2:-1]) if len(ctx_ids) > 1 else ""
        register = register_of(context)
        kws = keywords(context)
        topic = ", ".join(kws[:-1]) + f" and {kws[-1]}" if len(kws) > 1 else (kws[0] if kws else "a general subject")
        words = context.split()
        quote = _quote(words, rng.choice((4, 5, 6, 7)))
        preds = ", ".join(f'"{self.tok.decode([p]).strip() or self.tok.decode([p])}"' for p in predictions)
        register = ("an " if register[0] in "aeiou" else "a ") + register
        parts = [
            rng.choice(TOPIC).format(Register=register[0].upper() + register[1:], register=register, topic=topic),
            rng.choice(PHRASE).format(quote=quote),
            rng.choice(FINAL).format(token=token.strip() or token, role=token_role(token, previous), preds=preds),
        ]
        return "\n\n".join(parts)

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
