"""Known-harmless warnings from the libraries under nlakit, silenced precisely and in one place.

Each entry names one exact message (a regex matched from its start, as `warnings` does) and its category, so a new
or different warning from the same library still shows. Installed when `nlakit` is imported, before transformers or
peft load. (transformers' `past_key_values`/`cache_params` rename notice is not filtered: nlakit's own decode loop
read the old name, and now reads `cache` where it exists: `generation.output_cache`.)
"""

from __future__ import annotations

import warnings

KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # peft reads `model.is_gradient_checkpointing` whenever it wraps a model; transformers 5 renamed the property and
    # warns on every read. Harmless: the old name returns the same value until transformers 6.
    (
        r"`is_gradient_checkpointing` is deprecated and will be removed in v6\. "
        r"Use `is_activation_checkpointing` instead\.",
        FutureWarning,
    ),
)


def install() -> None:
    """Add the filters (idempotent: `warnings.filterwarnings` does not duplicate an identical entry)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
