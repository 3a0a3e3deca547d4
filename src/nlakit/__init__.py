"""nlakit: Natural Language Autoencoders for Hugging Face causal LMs.

Rooms follow the data: corpus -> extract -> explainers -> ar/av -> train -> nla -> eval/serve, with `cli` on top.
"""

from nlakit.errors import NlakitError

__version__ = "0.1.0"
__all__ = ["NlakitError", "__version__"]
