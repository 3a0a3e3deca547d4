"""nlakit: Natural Language Autoencoders for Hugging Face causal LMs.

Rooms follow the data: corpus -> extract -> explainers -> ar/av -> train -> nla -> eval/serve, with `cli` on top.
"""

from nlakit import _warnings
from nlakit.errors import NlakitError

_warnings.install()  # before transformers or peft load: silence their known-harmless notices, nothing else

__version__ = "0.1.0"
__all__ = ["NLA", "NlakitError", "__version__"]


def __getattr__(name: str):
    # `from nlakit import NLA` without importing torch for every `import nlakit` (the CLI starts faster)
    if name == "NLA":
        from nlakit.nla import NLA

        return NLA
    raise AttributeError(f"module 'nlakit' has no attribute {name!r}")
