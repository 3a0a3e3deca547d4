"""Explanation providers: turn a text context into 2-3 features a language model tracks where the text ends.

`make_explainer(name, **options)` builds one by name from `PROVIDERS`; new providers register there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from nlakit.errors import NlakitError
from nlakit.explainers.api import AnthropicExplainer, OpenAIExplainer
from nlakit.explainers.base import INSTRUCTION_PROMPT, Explainer, clean_analysis
from nlakit.explainers.grounded import GroundedExplainer
from nlakit.explainers.nla_av import AVExplainer

# Name -> constructor. Register further providers here.
PROVIDERS: dict[str, Callable[..., Explainer]] = {
    "grounded": GroundedExplainer,
    "openai": OpenAIExplainer,
    "anthropic": AnthropicExplainer,
    "nla": AVExplainer,  # an NLA's own AV, from each row's vector
}


def make_explainer(name: str, **options) -> Explainer:
    """Build the provider registered as `name` with its keyword options (model=, base_url=, ...)."""
    factory = PROVIDERS.get(name.lower())
    if factory is None:
        raise NlakitError(f"unknown explainer {name!r}; choose one of: {', '.join(sorted(PROVIDERS))}")
    try:  # a misspelt or missing option is a user error, not a traceback
        inspect.signature(factory).bind(**options)
    except TypeError as err:
        raise NlakitError(f"bad options for explainer {name!r}: {err}") from err
    return factory(**options)


__all__ = [
    "INSTRUCTION_PROMPT",
    "PROVIDERS",
    "AVExplainer",
    "AnthropicExplainer",
    "Explainer",
    "GroundedExplainer",
    "OpenAIExplainer",
    "clean_analysis",
    "make_explainer",
]
