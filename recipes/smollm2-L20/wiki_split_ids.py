"""The document ids of v1's wiki split (train/val/test), from the tokenizer alone.

v1's `nla split --seed 42` cut the documents of `runs/smollm2-L20/acts_wiki` (extraction: 3 positions per document,
min_position 16, max_tokens 256). A document has rows there when its tokens offer a position >= 16, which the
tokenizer decides without the model, so the same split follows in seconds instead of a 30-minute extraction. The
ids are written to `recipes/smollm2-L20/splits/wiki_{train,val,test}.txt`, one per line, for `nla eval --docs-from`.

Usage: .venv/bin/python recipes/smollm2-L20/wiki_split_ids.py
"""

from pathlib import Path

from nlakit.config import DEFAULT_MIN_POSITION
from nlakit.corpus import load_corpus
from nlakit.dataset import split_doc_ids
from nlakit.extract import sample_positions
from nlakit.models import load_tokenizer

OUT = Path(__file__).parent / "splits"


def main() -> None:
    tok = load_tokenizer("smollm2-135m")
    special = frozenset(tok.all_special_ids)
    ids = []
    for doc in load_corpus("wiki"):
        tokens = tok(doc.text, add_special_tokens=True, truncation=True, max_length=256)["input_ids"]
        if sample_positions(tokens, doc.id, seed=0, n=3, min_position=DEFAULT_MIN_POSITION, special_ids=special):
            ids.append(doc.id)
    groups = split_doc_ids(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=42)
    OUT.mkdir(exist_ok=True)
    for name, group in groups.items():
        (OUT / f"wiki_{name}.txt").write_text("".join(f"{i}\n" for i in sorted(group)), encoding="utf-8")
        print(f"{name}: {len(group)} documents -> {OUT / f'wiki_{name}.txt'}")


if __name__ == "__main__":
    main()
