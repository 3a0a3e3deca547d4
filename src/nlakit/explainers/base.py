"""The explainer interface and the text handling all providers share (instruction prompt, `clean_analysis`).

An explainer turns a text context into a short natural-language explanation (2-3 features, one paragraph
each) of what a language model must be tracking where the context ends. Rows it cannot explain come back as
`None` and are dropped by the caller; the reason is counted in `Explainer.stats`.
"""

from __future__ import annotations

import abc
import re
import threading
from collections.abc import Callable

INSTRUCTION_PROMPT = """Here is a snippet of text:

<begin_text>{text}<end_text>

A language model has read this snippet and now has to predict what comes right after it. Name the 2-3 \
features of the text that matter most for that prediction. Focus on what the model must be keeping in mind \
at the exact point where the snippet stops, and do not remark that the text is cut off or incomplete.

Order the features from most to least important and write each one as its own paragraph of roughly 10-20 \
words; you may quote short examples from the text inline. Useful kinds of feature include:
- syntactic or structural constraints (an open clause, list, bracket or quotation)
- immediate semantic expectations (what the next words are likely to be about)
- style and register
- narrative or argumentative momentum
- signals of domain or genre
- repetition, or continuation of an established pattern

The last feature must describe the very end of the sequence: the final token, the role it plays, and what it \
constrains about the token that follows.

Keep the whole analysis to about 80-100 words, put it inside <analysis></analysis> tags, and always write \
the closing </analysis> tag."""

# Counters every explainer keeps, so the dataset sidecar has the same keys whichever provider ran.
STAT_KEYS = (
    "explained",
    "dropped_missing_tag",
    "dropped_few_features",
    "dropped_refusal",
    "dropped_transient",
    "retries",
    "http_429",
    "http_5xx",
    "timeouts",
    "connection_errors",
    "bad_json",
)

_ANALYSIS = re.compile(r"<analysis>\s*(.*?)\s*</analysis>", re.DOTALL)
# A list marker must be followed by whitespace, so "A sentence" or "1.5 litres" keep their first word;
# markers are short ("1.", "2.3)", "(b)", "iv.") so a year or a word such as "Mix." is never taken for one.
_ROMAN = r"(?=[ivx])x{0,3}(?:ix|iv|v?i{0,3})"
_ITEM = rf"(?:\d{{1,3}}(?:\.\d{{1,3}})*|[a-z]|{_ROMAN})"
_LIST_PREFIX = re.compile(rf"^(?:[-*•+–—]|{_ITEM}[.)]|\({_ITEM}\))(?:\s+|$)", re.IGNORECASE)
_BOLD_HEADER = re.compile(r"^\*\*(.+?)\*\*")
_LEFT_MARKUP = re.compile(r"[*_]+")
_RIGHT_MARKUP = re.compile(r"[*_]+$")


def _split_analysis(raw: str) -> list[str] | None:
    """The cleaned paragraphs inside <analysis>...</analysis>; None when the tag is missing or unclosed."""
    match = _ANALYSIS.search(raw)
    if match is None:
        return None
    paragraphs = []
    for line in match.group(1).splitlines():
        line = _LIST_PREFIX.sub("", line.strip())
        header = _BOLD_HEADER.match(line)
        if header:  # "**Header:** text" -> "Header: text"; the header may carry its own "1." marker
            line = _LIST_PREFIX.sub("", header.group(1).strip()) + line[header.end() :]
        line = _trim_stray_markup(line.strip())
        if line:
            paragraphs.append(line)
    return paragraphs


def _trim_stray_markup(line: str) -> str:
    """Drop `*`/`_` runs at the ends of a line unless they pair with emphasis inside ("*a* and *b*" stays)."""
    left = _LEFT_MARKUP.match(line)
    opening = left.group() if left else ""
    line = line[len(opening) :]
    right = _RIGHT_MARKUP.search(line)
    closing = right.group() if right else ""
    middle = line[: len(line) - len(closing)]
    opening = opening if opening and opening in middle else ""
    closing = closing if closing and closing in middle else ""
    return (opening + middle + closing).strip()


def clean_analysis(raw: str) -> str | None:
    """The features of a reply as plain paragraphs joined by blank lines; None if untagged or < 2 features."""
    paragraphs = _split_analysis(raw)
    if paragraphs is None or len(paragraphs) < 2:
        return None
    return "\n\n".join(paragraphs)


class Explainer(abc.ABC):
    """A provider of explanations. Subclasses set `name` and call `super().__init__()` to get `stats`."""

    name: str

    def __init__(self) -> None:
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._stats_lock = threading.Lock()  # explain() may run requests on several threads

    @abc.abstractmethod
    def settings(self) -> dict:
        """What the dataset sidecar records about this provider (never a secret such as an API key)."""

    @abc.abstractmethod
    def explain(self, contexts: list[str], progress: Callable[[int], None] | None = None) -> list[str | None]:
        """One explanation per context, in input order; None for a row to drop.

        `progress(n)` is called as rows finish, with the number of rows just finished.
        """

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] = self.stats.get(key, 0) + n

    def _finish(self, raw: str) -> str | None:
        """Clean a model reply, counting why it was dropped when it is unusable."""
        paragraphs = _split_analysis(raw)
        if paragraphs is None:
            self._count("dropped_missing_tag")
            return None
        if len(paragraphs) < 2:
            self._count("dropped_few_features")
            return None
        self._count("explained")
        return "\n\n".join(paragraphs)
