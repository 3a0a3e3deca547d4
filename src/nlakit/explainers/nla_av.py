"""The explanations an NLA's own AV writes (greedy) for each row's activation, as a datagen provider.

They are the texts an AR must read at inference, so an AR adapted on them to new registers learns what RL's AR half
learns, offline and greedy (the AV's eval-time decoding), without sampling noise or moving the AV. With `best_of` > 1
each row keeps the AR's pick among the greedy text and samples (`NLA.pick_best`): SFT of the AV on those picks is
expert iteration, RL's AV half done offline.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nlakit.config import DEFAULT_NLA
from nlakit.errors import NlakitError
from nlakit.explainers.base import Explainer


class AVExplainer(Explainer):
    name = "nla"
    reads_vectors = True  # datagen passes each row's activation: the AV explains the vector, not the text

    def __init__(
        self,
        model: str = DEFAULT_NLA,
        *,
        max_new_tokens: int | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 32,
        best_of: int = 1,
    ):
        from nlakit.nla import NLA

        super().__init__()
        self.model_name, self.batch_size, self.best_of = model, batch_size, best_of
        self.nla = NLA.from_pretrained(model, device=device, dtype=dtype)
        if self.nla.av is None:
            raise NlakitError(f"{model} has no AV to explain with")
        if best_of > 1 and self.nla.ar is None:
            raise NlakitError(f"{model} has no AR to pick the best of {best_of} explanations with")
        self.max_new_tokens = max_new_tokens or self.nla.av.meta.max_new_tokens

    def settings(self) -> dict:
        return {
            "provider": self.name,
            "model": str(self.model_name),
            "max_new_tokens": self.max_new_tokens,
            "best_of": self.best_of,
        }

    def explain(
        self,
        contexts: list[str],
        progress: Callable[[int], None] | None = None,
        vectors: np.ndarray | None = None,
    ) -> list[str | None]:
        if vectors is None or len(vectors) != len(contexts):
            raise NlakitError("the nla explainer needs one activation vector per row")
        out: list[str | None] = []
        for b in range(0, len(contexts), self.batch_size):
            texts = self.nla.verbalize(
                vectors[b : b + self.batch_size],
                max_new_tokens=self.max_new_tokens,
                temperature=0.0,
                best_of=self.best_of,
            )
            for t in texts:
                self._count("explained" if t.strip() else "dropped_missing_tag")
                out.append(t if t.strip() else None)
            if progress:
                progress(len(texts))
        return out
