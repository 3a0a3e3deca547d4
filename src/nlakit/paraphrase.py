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


def synonym_rewrite(text: str, rng: random.Random, rate: float = 0.7) -> str:
    table = {**SYNONYMS, **{v: k for k, v in SYNONYMS.items() if " " not in v}}

    def swap(m: re.Match) -> str:
        w = m.group(0)
        rep = table.get(w.lower())
        if rep is None or rng.random() > rate:
            return w
        return rep.capitalize() if w[0].isupper() else rep

    return _WORD.sub(swap, text)


def remove_quotes(text: str) -> str:
    """Drop quoted spans (the most literal channel of an explanation)."""
    return re.sub(r"\s*[\"“][^\"”]*[\"”]", "", text)


def truncate_words(text: str, k: int) -> str:
    return " ".join(text.split()[:k])


def shuffle_words(text: str, rng: random.Random) -> str:
    """Meaning-destroying control: the same words in a random order."""
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def paraphrase(text: str, rng: random.Random) -> str:
    """A meaning-preserving rewrite: units reordered and some words replaced by synonyms."""
    return synonym_rewrite(shuffle_units(text, rng), rng)
