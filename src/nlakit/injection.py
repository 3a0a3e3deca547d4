"""The marker token and the injection of a vector into the AV's input embeddings (pure functions, tested alone).

The marker is a character that is exactly one token. Like the reference we scan U+3200-U+33FF first and take the first
single-token character; byte-level BPE vocabularies (SmolLM2) have none there, so we fall back to rare Latin-1 and
symbol characters. A candidate is kept only if, inside the rendered AV prompt, it is still one token that occurs exactly
once and is not at an edge: its neighbours are then recorded and checked at every injection.
"""

from __future__ import annotations

import itertools

import torch

from nlakit.errors import NlakitError
from nlakit.maths import normalize
from nlakit.meta import AR_TEMPLATE, Tokens

FALLBACK_MARKERS = "¬¤¦†‡§¶※"
_SCAN = itertools.chain(range(0x3200, 0x3400), map(ord, FALLBACK_MARKERS), range(0x00A1, 0x0100), range(0x2190, 0x2400))


def render_av_prompt(tok, template: str, char: str) -> list[int]:
    """Token ids of the AV prompt: one user message through the chat template, with the generation prompt.

    Rendered to text then encoded without special tokens, so a BOS is never doubled (reference pitfall)."""
    content = template.format(injection_char=char)
    if not getattr(tok, "chat_template", None):
        # as the reference: an AV prompt is always a chat turn; a bare-text fallback would be a prompt it never saw
        name = getattr(tok, "name_or_path", "") or type(tok).__name__
        raise NlakitError(
            f"tokenizer {name!r} has no chat template, and the AV prompt is a chat turn; use the AV's own tokenizer "
            "(its folder's tokenizer_config.json or chat_template.jinja) or set tokenizer.chat_template"
        )
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


def canonical_neighbors(tok, template: str, char: str, marker_id: int) -> tuple[int, int]:
    ids = render_av_prompt(tok, template, char)
    where = [i for i, t in enumerate(ids) if t == marker_id]
    if len(where) != 1 or where[0] in (0, len(ids) - 1):
        raise ValueError(f"marker {char!r} occurs {len(where)} times in the rendered AV prompt")
    p = where[0]
    return ids[p - 1], ids[p + 1]


def critic_suffix_ids(tok, ar_template: str = AR_TEMPLATE) -> list[int]:
    """The AR prompt's closing tokens, minus the first (it can BPE-merge with the explanation's last character).
    A `{quote}` template's tokens after the quote vary with the text, so the fixed suffix stops before it."""
    suffix = ar_template.split("{explanation}", 1)[1].split("{quote}", 1)[0]
    return tok.encode(suffix, add_special_tokens=False)[1:]


def find_marker(tok, av_template: str, ar_template: str = AR_TEMPLATE) -> Tokens:
    """Pick the marker for a tokenizer and record its id, neighbours and the AR suffix ids."""
    for cp in _SCAN:
        char = chr(cp)
        ids = tok.encode(char, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == tok.unk_token_id:
            continue
        try:
            left, right = canonical_neighbors(tok, av_template, char, ids[0])
        except ValueError:
            continue
        return Tokens(char, ids[0], left, right, critic_suffix_ids(tok, ar_template))
    raise NlakitError("no single-token marker character found for this tokenizer; set tokens.injection_char by hand")


def check_tokens(tok, tokens: Tokens, av_template: str) -> None:
    """Check a sidecar's marker against the live tokenizer (reference load-time asserts), with one-line errors."""
    ids = tok.encode(tokens.injection_char, add_special_tokens=False)
    if ids != [tokens.injection_token_id]:
        raise NlakitError(
            f"sidecar marker {tokens.injection_char!r} should be token {tokens.injection_token_id} but this tokenizer "
            f"gives {ids}; the checkpoint was made for another tokenizer"
        )
    try:
        left, right = canonical_neighbors(tok, av_template, tokens.injection_char, tokens.injection_token_id)
    except ValueError as e:
        raise NlakitError(f"{e}; the sidecar's AV template and tokenizer disagree") from None
    if (left, right) != (tokens.injection_left_neighbor_id, tokens.injection_right_neighbor_id):
        raise NlakitError(
            f"marker neighbours are ({left}, {right}) here but ({tokens.injection_left_neighbor_id}, "
            f"{tokens.injection_right_neighbor_id}) in the sidecar; the chat template or tokenizer changed"
        )


def marker_positions(ids: torch.Tensor, mask: torch.Tensor, tokens: Tokens) -> torch.Tensor:
    """For each row, the first position holding the marker between its recorded neighbours.

    Only the first match counts: the prompt precedes any response, so a marker that user or model text happens to
    contain later in the row is left alone. A row with no match raises (a silent failed injection is the worst bug)."""
    m, left, right = tokens.injection_token_id, tokens.injection_left_neighbor_id, tokens.injection_right_neighbor_id
    hit = torch.zeros_like(ids, dtype=torch.bool)
    hit[:, 1:-1] = (ids[:, 1:-1] == m) & (ids[:, :-2] == left) & (ids[:, 2:] == right) & mask[:, 1:-1].bool()
    if not bool(hit.any(dim=1).all()):
        bad = int((~hit.any(dim=1)).nonzero()[0])
        raise NlakitError(
            f"row {bad} has no marker between its neighbours: the AV prompt was not built from the sidecar"
        )
    return hit.int().argmax(dim=1)


def inject(embeds: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Return `embeds` with row `positions[b]` of batch item b replaced by `vectors[b]` rescaled to norm `scale`."""
    if vectors.shape[0] != embeds.shape[0]:
        raise NlakitError(f"{vectors.shape[0]} vectors for {embeds.shape[0]} prompts; give one vector per prompt")
    if vectors.shape[-1] != embeds.shape[-1]:
        raise NlakitError(
            f"vectors have d={vectors.shape[-1]} but the AV embeds d={embeds.shape[-1]}; "
            "use the AV's input projection or the right layer's vectors"
        )
    out = embeds.clone()
    rows = torch.arange(embeds.shape[0], device=embeds.device)
    out[rows, positions] = normalize(vectors.to(embeds.device, torch.float32), scale).to(embeds.dtype)
    return out


def check_vectors(vectors: torch.Tensor, d_model: int) -> torch.Tensor:
    """Validate user vectors: 2-D [n, d], finite, non-zero. One-line errors that say which row is bad."""
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[1] != d_model:
        raise NlakitError(
            f"expected vectors of shape [n, {d_model}], got {list(vectors.shape)}; "
            "was the activation taken from another model or layer?"
        )
    finite = torch.isfinite(vectors).all(dim=1)
    if not bool(finite.all()):
        raise NlakitError(f"vector {int((~finite).nonzero()[0])} contains NaN or inf; drop or re-extract it")
    zero = vectors.abs().amax(dim=1) == 0
    if bool(zero.any()):
        raise NlakitError(f"vector {int(zero.nonzero()[0])} is all zeros: it has no direction to explain")
    return vectors
