"""Meaning-preserving rewrites of an explanation (and meaning-destroying controls), used to deny the AV/AR pair
steganographic side channels during RL and to probe for them in evaluation. Rule-based and seeded: no hub."""

from __future__ import annotations

import random
import re

# Small, conservative synonym table for words explanations use; both directions are applied.
SYNONYMS = {
    "text": "passage",
    "about": "concerning",
    "discussing": "covering",
    "subject": "topic",
    "phrase": "expression",
    "current": "present",
    "final": "last",
    "token": "word piece",
    "likely": "probable",
    "expects": "anticipates",
    "predicts": "forecasts",
    "follow": "come next",
    "continuations": "next words",
    "guesses": "candidates",
    "formal": "academic",
    "prose": "writing",
    "encyclopedic": "reference-style",
    "passage": "excerpt",
    "describes": "depicts",
    "begins": "starts",
    "ends": "finishes",
    "important": "key",
    "model": "network",
    "recent": "latest",
    "predicted": "expected",
    "chat": "conversation",
    "capitalised": "capitalized",
    "preposition": "prepositional word",
}
_WORD = re.compile(r"[A-Za-z]+")


def split_units(text: str) -> list[str]:
    """Paragraphs if there are several, else sentences."""
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    if len(paras) > 1:
        return paras
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def shuffle_units(text: str, rng: random.Random) -> str:
    units = split_units(text)
    rng.shuffle(units)
    return ("\n\n" if "\n\n" in text else " ").join(units)


def shuffle_units_keep_last(text: str, rng: random.Random) -> str:
    """Reorder the units but the last (the final token and its predictions stay where readers look for them)."""
    units = split_units(text) if "\n\n" in text else [u for u in text.split("\n") if u.strip()]
    head = units[:-1]
    rng.shuffle(head)
    sep = "\n\n" if "\n\n" in text else "\n"
    return sep.join(head + units[-1:])


_QUOTED = re.compile(r"([\"\u201c][^\"\u201d]*[\"\u201d])")


def synonym_rewrite(text: str, rng: random.Random, rate: float = 0.7) -> str:
    """Replace some words by synonyms, never inside quotes: quoted words are the literal content (tokens, next-token
    guesses), and a synonym there would change what the explanation says."""
    table = {**SYNONYMS, **{v: k for k, v in SYNONYMS.items() if " " not in v}}

    def swap(m: re.Match) -> str:
        w = m.group(0)
        rep = table.get(w.lower())
        if rep is None or rng.random() > rate:
            return w
        return rep.capitalize() if w[0].isupper() else rep

    parts = _QUOTED.split(text)  # odd indices are the quoted spans
    return "".join(p if i % 2 else _WORD.sub(swap, p) for i, p in enumerate(parts))


def remove_quote_marks(text: str) -> str:
    """Meaning-preserving: the quotation marks go, the quoted words stay."""
    return re.sub(r"[\"\u201c\u201d]", "", text)


def remove_quotes(text: str) -> str:
    """Content ablation, not a paraphrase: drop quoted spans (the most literal channel of an explanation)."""
    return re.sub(r"\s*[\"“][^\"”]*[\"”]", "", text)


def truncate_words(text: str, k: int) -> str:
    return " ".join(text.split()[:k])


def shuffle_words(text: str, rng: random.Random) -> str:
    """Meaning-destroying control: the same words in a random order."""
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def paraphrase(text: str, rng: random.Random) -> str:
    """A meaning-preserving rewrite for AR training: units reordered (the last stays last) and some words outside
    quotes replaced by synonyms."""
    return synonym_rewrite(shuffle_units_keep_last(text, rng), rng)
