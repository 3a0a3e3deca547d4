"""`nla eval`: how much an NLA's English carries, and whether it is the English that carries it.

One pass over held-out positions (documents sampled as in extraction), then four families of numbers:
1. fidelity: fve_nrm (rawvar and meannorm denominators), cosine, by position and by token kind;
2. baselines on the same vectors: predict-the-mean, nearest training neighbour, the logit-lens text, the verbatim
   context, and another activation's explanation (= the AV given a shuffled vector, under greedy decoding);
3. steganography probes: the AR re-scored on meaning-preserving rewrites (sentence shuffle, synonyms, quotes removed,
   truncation) and on meaning-destroying controls (word shuffle); a large drop under a meaning-preserving rewrite
   means the pair leans on surface form rather than content. Content ablations say which claim carries the vector:
   the quoted spans removed, and (grounded format) each line swapped for another row's;
4. causal checks: round-trip patching of AR(AV(h)) into the target (KL of the next-token distribution) against the
   mean and a random vector, and text-edit steering against random directions of equal norm, beside a no-NLA
   baseline (the word-residual direction) pushed by the same rule.
Works on any NLA folder, the reference's format included (`--av`/`--ar`).
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from nlakit.config import EvalConfig
from nlakit.corpus import Document, load_corpus
from nlakit.errors import NlakitError
from nlakit.explainers.grounded import LINES, GroundedExplainer, is_grounded, line_kind
from nlakit.extract import sample_positions
from nlakit.io import atomic_write_text
from nlakit.maths import (
    best_of_curve,
    cosine,
    fve_nrm,
    meannorm_baseline,
    mse_nrm,
    normalize,
    paired_bootstrap,
    rawvar_baseline,
)
from nlakit.meta import META_NAME, read_model_meta
from nlakit.models import final_norm
from nlakit.nla import NLA, load_ar, resolve_nla_path, score_texts
from nlakit.paraphrase import remove_quote_marks, remove_quotes, shuffle_units, shuffle_words, synonym_rewrite
from nlakit.progress import progress_bar
from nlakit.steer import kl_divergence, match_norm, next_token_logprobs, steering_vector

TRUNCATIONS = (4, 8, 16, 32, 64)
POSITION_BUCKETS = ((16, 32), (32, 64), (64, 128), (128, 10**9))
DICTIONARY = Path("/usr/share/dict/words")

# Text-edit steering cases: a prompt whose next token is open, and a concept to steer toward.
STEER_CASES = (
    ("My favourite animal is the", "dog"),
    ("She poured herself a cup of", "coffee"),
    ("The capital city of the country is", "Paris"),
    ("He picked up the musical instrument and played the", "piano"),
    ("For dinner we are having", "pizza"),
    ("The weather today is very", "cold"),
    ("The most popular sport in the world is", "football"),
    ("On the table there was a bowl of", "soup"),
)
# Development cases: the edit form and alpha are chosen on these, then the test cases above are scored at that one
# setting, so the reported win count is not picked on the cases it counts.
STEER_DEV_CASES = (
    ("In the garden she planted a row of", "roses"),
    ("The train was late, so we took a", "taxi"),
    ("The children built a castle out of", "sand"),
    ("For breakfast he always eats", "eggs"),
    ("The ship sailed across the", "ocean"),
    ("My brother plays the", "drums"),
    ("The old house was painted", "blue"),
    ("We watched the sun rise over the", "mountains"),
)
# The paper's planning case: the rhyme word of the second line is planned at the end of the first. The edit at the
# line break asks for "mouse" instead of "rabbit"; a win moves the rhyme's first token (measured at the last token).
RHYME_CASE = ("He saw a carrot and had to grab it,\nHis hunger was like a starving", "mouse", "grab it,\n")


# ---------------------------------------------------------------- inputs


def _doc_ids(source: str) -> list[str]:
    """Document ids of a dataset folder, or of a .txt file with one id per line (a split kept in a recipe)."""
    from nlakit.dataset import read_table

    path = Path(source)
    if path.suffix == ".txt":
        if not path.is_file():
            raise NlakitError(f"id list {path} does not exist; give a split folder or a .txt of document ids")
        try:
            ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise NlakitError(f"{path} is not UTF-8 text ({e.reason}); write one document id per line") from None
        if not ids:
            raise NlakitError(f"{path} lists no document ids; write one id per line")
        return ids
    return read_table(source, ["doc_id"]).column("doc_id").to_pylist()


def eval_documents(cfg: EvalConfig) -> list[Document]:
    """The documents to evaluate on, in a seeded order (so `--max-positions` takes a fair sample)."""
    if bool(cfg.texts) == bool(cfg.corpus):
        raise NlakitError("give exactly one of --texts FILE or --corpus NAME")
    if cfg.texts:
        path = Path(cfg.texts)
        if path.suffix not in (".txt", ".jsonl"):
            raise NlakitError(f"--texts {path} must be a .txt (blank-line separated) or .jsonl file with a text field")
        docs = load_corpus(path)
    else:
        docs = load_corpus(cfg.corpus)
        if cfg.docs_from:
            # the documents the recipe's split wrote, never a re-split: a re-split of the corpus cuts differently
            wanted = set(_doc_ids(cfg.docs_from))
            docs = [d for d in docs if d.id in wanted]
            if len(docs) < len(wanted):
                raise NlakitError(
                    f"{len(wanted) - len(docs)} documents of {cfg.docs_from} are not in corpus {cfg.corpus!r}; "
                    "give the corpus that dataset was extracted from"
                )
    if cfg.train_data:
        overlap = {d.id for d in docs} & set(_doc_ids(cfg.train_data))
        if overlap:
            raise NlakitError(
                f"{len(overlap)} evaluation documents are in the training data {cfg.train_data} (e.g. "
                f"{sorted(overlap)[0]!r}); evaluate held-out documents, e.g. --docs-from the split's test folder"
            )
    docs = sorted(docs, key=lambda d: d.id)
    random.Random(cfg.seed).shuffle(docs)
    return docs


@dataclass
class Sample:
    doc_id: str
    position: int
    token: str
    context: str
    ids: list[int]  # the document's token ids


def token_kind(token: str) -> str:
    t = token.strip()
    if not t:
        return "whitespace"
    if any(c.isdigit() for c in t):
        return "number"
    if not any(c.isalpha() for c in t):
        return "punctuation"
    return "word start" if token[:1].isspace() else "word piece"


# ---------------------------------------------------------------- pure helpers


def logit_lens_text(top_tokens: list[str]) -> str:
    """The logit-lens baseline's 'explanation': the target's top next tokens read off layer K."""
    return "The model expects " + ", ".join(f'"{t.strip() or t}"' for t in top_tokens) + " next."


def truncate_tokens(tok, text: str, k: int) -> str:
    return tok.decode(tok.encode(text, add_special_tokens=False)[:k])


EDIT_FORMS = ("replace", "append")


def edit_toward(explanation: str, word: str, form: str = "replace") -> str:
    """A steering edit toward `word`.
    - `replace`: the concept takes the place of the topic inside the usual format: in free-form explanations every
      quoted span becomes `word`; in the grounded format the topic and the predicted next words become `word`, and
      the quoted recent words end with it (the quote a `{quote}` AR re-reads: kept the longest quote, so that
      template still picks it, where the word alone can be shorter than the current token's quote);
    - `append`: the explanation is kept and a sentence naming `word` is added (public replications report this
      form fails: the AR reads it as a minor detail)."""
    if form == "append":
        return explanation.rstrip() + f" The text is about {word}."
    if form != "replace":
        raise NlakitError(f"unknown edit form {form!r}; use one of {', '.join(EDIT_FORMS)}")
    lines = explanation.split("\n")
    if is_grounded(explanation):
        out = []
        for ln in lines:
            kind = line_kind(ln)
            if kind == "predicted next":
                ln = f'Predicted next: "{word}".'
            elif kind == "recent words":
                m = re.match(r'Recent words: "(.*)"', ln)
                ln = f'Recent words: "{m.group(1) + " " if m else ""}{word}".'
            elif kind == "topic" and ln.endswith("."):
                ln = ln.split(" about ", 1)[0] + f" about {word}."
            out.append(ln)
        return "\n".join(out)
    edited, n = re.subn(r"[\"\u201c][^\"\u201d]*[\"\u201d]", f'"{word}"', explanation)
    return edited if n else explanation.rstrip() + f' The model expects "{word}" next.'


SWAP_PROBES = {f"swap_{kind.replace(' ', '_')}": kind for kind in LINES}


def line_swaps(texts: list[str], perm: list[int]) -> dict[str, list[str]]:
    """One content ablation per claim of the grounded format: the line of that kind (`line_kind`) in each explanation
    replaced by the same kind of line from another row's (`perm`), the rest kept. The fve lost shows which claim the
    AR reads, e.g. whether it uses the predicted words, which text-edit steering edits. Empty unless most
    explanations are in that format; a row where either side lacks the line stays as it is."""
    grounded = [is_grounded(t) for t in texts]
    if sum(grounded) * 2 <= len(texts):
        return {}

    def line_of(text: str) -> dict[str | None, int]:  # the first line of each kind
        index: dict[str | None, int] = {}
        for i, ln in enumerate(text.split("\n")):
            index.setdefault(line_kind(ln), i)
        return index

    kinds = [line_of(t) if g else {} for t, g in zip(texts, grounded, strict=True)]  # free text: no claims to swap
    out = {}
    for name, kind in SWAP_PROBES.items():
        swapped = []
        for t, mine, j in zip(texts, kinds, perm, strict=True):
            if kind in mine and kind in kinds[j]:
                lines = t.split("\n")
                lines[mine[kind]] = texts[j].split("\n")[kinds[j][kind]]
                t = "\n".join(lines)
            swapped.append(t)
        out[name] = swapped
    return out


def wilson_interval(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sane at 0/n and n/n, unlike the normal approximation)."""
    if n == 0:
        return (0.0, 1.0)
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def english_word_share(texts: list[str], words: set[str]) -> float:
    """Share of alphabetic words (case-folded, inner apostrophes kept) found in `words`."""
    tokens = [w.lower() for t in texts for w in re.findall(r"[A-Za-z]+(?:'[a-z]+)?", t)]
    return sum(w in words for w in tokens) / len(tokens) if tokens else float("nan")


def load_dictionary(path: Path = DICTIONARY) -> set[str] | None:
    if not path.is_file():
        return None
    return {w.strip().lower() for w in path.read_text(errors="ignore").splitlines() if w.strip().isalpha()}


def summarise(mse: torch.Tensor, cos: torch.Tensor, rawvar: float, meannorm: float) -> dict[str, float]:
    m = float(mse.mean())
    return {
        "mse_nrm": m,
        "fve_nrm": 1 - m / rawvar,
        "fve_meannorm": 1 - m / meannorm,
        "cos_mean": float(cos.mean()),
    }


# ---------------------------------------------------------------- the pass


@torch.no_grad()
def collect(nla: NLA, docs: list[Document], cfg: EvalConfig) -> tuple[list[Sample], torch.Tensor, torch.Tensor]:
    """Sampled positions, their layer-K vectors [n, d], and the target's next-token log-probs there [n, V]:
    one `run_with_cache` per document (a full forward, the LM head only at the sampled positions)."""
    tok = nla.target_tokenizer()
    special = frozenset(tok.all_special_ids)
    samples, vecs, logps = [], [], []
    with progress_bar("eval: read activations", total=cfg.max_positions) as bar:
        for doc in docs:
            if len(samples) >= cfg.max_positions:
                break
            ids = tok(doc.text, add_special_tokens=True, truncation=True, max_length=cfg.max_tokens)["input_ids"]
            pos = sample_positions(
                ids, doc.id, seed=cfg.seed, n=cfg.positions_per_doc, min_position=cfg.min_position, special_ids=special
            )[: cfg.max_positions - len(samples)]
            if not pos:
                continue
            cache = nla.run_with_cache(ids[: max(pos) + 1], logits=pos)
            vecs.append(cache.resid[pos])
            logps.append(torch.log_softmax(cache.logits, -1))
            for p in pos:
                samples.append(
                    Sample(doc.id, p, tok.decode([ids[p]]), tok.decode(ids[: p + 1], skip_special_tokens=True), ids)
                )
            bar.advance(len(pos))
    if not samples:
        raise NlakitError(
            f"no positions to evaluate: every document is shorter than --min-position {cfg.min_position} tokens"
        )
    return samples, torch.cat(vecs), torch.cat(logps)


@torch.no_grad()
def logit_lens_top(nla: NLA, vectors: torch.Tensor, k: int = 5) -> list[list[str]]:
    model, tok = nla.target_lm(), nla.target_tokenizer()
    p = next(model.parameters())
    logits = model.get_output_embeddings()(final_norm(model)(vectors.to(p.device, p.dtype)))
    return [[tok.decode([i]) for i in row] for row in logits.topk(k, dim=-1).indices.tolist()]


def nearest_training_vector(vectors: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """ORACLE, not a baseline: for each vector, the most cosine-similar training activation. It looks at the very
    vector it predicts, so it bounds what a codebook of training vectors could do; no user can run it on text."""
    tn = train / train.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    q = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    best = torch.cat([(q[i : i + 256] @ tn.T).argmax(-1) for i in range(0, len(q), 256)])
    return train[best]


RETRIEVAL_DIM = 1 << 16


def _coo(indices, values: torch.Tensor, shape) -> torch.Tensor:
    # invariants checked explicitly (cheap at this size): torch warns when the choice is left implicit
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=True).coalesce()


def _bag_of_words(texts: list[str], idf: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse [n, RETRIEVAL_DIM] hashed counts of lower-cased words, log-scaled (times idf when given), unit rows.
    The last eight words count double: the prediction at a position depends most on the words just before it."""
    import zlib

    rows, cols, vals = [], [], []
    for i, t in enumerate(texts):
        words = re.findall(r"\w+", t.lower())
        counts: dict[int, float] = {}
        for j, w in enumerate(words):
            h = zlib.crc32(w.encode()) % RETRIEVAL_DIM
            counts[h] = counts.get(h, 0.0) + (2.0 if j >= len(words) - 8 else 1.0)
        for h, c in counts.items():
            rows.append(i)
            cols.append(h)
            vals.append(math.log1p(c))
    x = _coo([rows, cols], torch.tensor(vals), (len(texts), RETRIEVAL_DIM))
    if idf is not None:
        x = _coo(x.indices(), x.values() * idf[x.indices()[1]], x.shape)
    norms = torch.zeros(len(texts)).index_add_(0, x.indices()[0], x.values() ** 2).sqrt().clamp_min(1e-8)
    return _coo(x.indices(), x.values() / norms[x.indices()[0]], x.shape)


def nearest_context(contexts: list[str], train_data: str) -> torch.Tensor:
    """BASELINE (a user can run it on text): the vector of the training row whose context is most similar by
    tf-idf cosine. What an NLA adds beyond it is what the words carry beyond retrieving a similar passage."""
    from nlakit.dataset import read_table, vectors_of

    table = read_table(train_data, ["activation_vector", "context"])
    train_ctx = table.column("context").to_pylist()
    train_vec = torch.from_numpy(vectors_of(table)).float()
    raw = _bag_of_words(train_ctx)
    df = torch.zeros(RETRIEVAL_DIM).index_add_(0, raw.indices()[1], torch.ones(raw.indices().shape[1]))
    idf = torch.log((len(train_ctx) + 1) / (df + 1)) + 1
    train_x = _bag_of_words(train_ctx, idf)
    q = _bag_of_words(contexts, idf).to_dense()
    best = torch.cat([(train_x @ q[i : i + 64].T).argmax(0) for i in range(0, len(q), 64)])
    return train_vec[best]


def run_eval(cfg: EvalConfig, nla: NLA | None = None) -> dict:
    """Evaluate, write `out/report.json`, `out/report.md` and PNG plots; return the report."""
    docs = eval_documents(cfg)  # bad inputs fail before a model loads
    nla = nla or NLA.from_config(cfg)
    if nla.av is None or nla.ar is None:
        raise NlakitError("eval needs both an AV and an AR")
    check_comparisons(cfg, nla)
    # the report records the cap actually used
    cfg = replace(cfg, max_new_tokens=cfg.max_new_tokens or nla.av.meta.max_new_tokens)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(cfg.seed)

    samples, vectors, logp_orig = collect(nla, docs, cfg)
    n = len(samples)
    rawvar, meannorm = rawvar_baseline(vectors), meannorm_baseline(vectors)
    # best_of > 1: the scored text is the AR's pick among the greedy text and samples; the greedy text stays as a
    # reference line, so the report shows what the pick adds (and, with --compare-ar, whether another reader agrees)
    candidates = eval_candidates(nla, vectors, cfg)
    cand_mse = nla.candidate_scores(candidates, vectors) if cfg.best_of > 1 else None
    picked = cand_mse.argmin(1).tolist() if cand_mse is not None else [0] * n
    texts = [c[j] for c, j in zip(candidates, picked, strict=True)]
    # another activation's explanation: a rotation by half the set never pairs a row with itself or (for sets of
    # more than a few documents) with a position of its own document
    perm = [(i + max(1, n // 2)) % n for i in range(n)]

    ar_tok = nla.ar.tok
    variants: dict[str, list[str]] = {
        "explanation": texts,
        "sentence_shuffle": [shuffle_units(t, random.Random(f"{cfg.seed}|{i}")) for i, t in enumerate(texts)],
        "synonyms": [synonym_rewrite(t, random.Random(f"{cfg.seed}|{i}")) for i, t in enumerate(texts)],
        "unquoted": [remove_quote_marks(t) for t in texts],
        "quotes_removed": [remove_quotes(t) for t in texts],
        "word_shuffle": [shuffle_words(t, random.Random(f"{cfg.seed}|{i}")) for i, t in enumerate(texts)],
        "other_explanation": [texts[j] for j in perm],
        **line_swaps(texts, perm),
        "teacher": GroundedExplainer(nla.target, dtype=cfg.dtype, device=cfg.device).explain(
            [s.context for s in samples]
        ),
        "logit_lens": [logit_lens_text(top) for top in logit_lens_top(nla, vectors)],
        "context": [s.context for s in samples],
    }
    if cfg.best_of > 1:
        variants["greedy"] = [c[0] for c in candidates]
        variants["one_sample"] = [c[1] for c in candidates]
    for k in TRUNCATIONS:
        variants[f"truncate_{k}"] = [truncate_tokens(ar_tok, t, k) for t in texts]

    scores: dict[str, dict[str, torch.Tensor]] = {}
    with progress_bar("eval: AR scoring", total=len(variants)) as bar:
        for name, vs in variants.items():
            scores[name] = score_texts(nla.ar, vs, vectors)
            bar.advance(1)

    def summary(name: str) -> dict[str, float]:
        return summarise(scores[name]["mse_nrm"], scores[name]["cos"], rawvar, meannorm)

    main = summary("explanation")
    report: dict = {
        "n": n,
        "documents": len({s.doc_id for s in samples}),
        **main,
        "rawvar": rawvar,
        "meannorm": meannorm,
        "rawvar_train": nla.rawvar,
        "fve_nrm_train_rawvar": 1 - main["mse_nrm"] / nla.rawvar if nla.rawvar else None,
        "target": nla.target,
        "layer": nla.layer,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("steer_cases", "steer_dev_cases")},
    }

    # baselines
    # the best constant guess for a normalised comparison: the mean of the normalised vectors (the meannorm baseline)
    mean_vec = normalize(vectors, math.sqrt(vectors.shape[-1])).mean(0, keepdim=True).expand_as(vectors)
    baselines = {
        "mean": summarise(mse_nrm(mean_vec, vectors), cosine(mean_vec, vectors), rawvar, meannorm),
        "shuffled_activation": summary("other_explanation"),
        "logit_lens": summary("logit_lens"),
        "context": summary("context"),
    }
    if cfg.train_data:
        near = nearest_context([s.context for s in samples], cfg.train_data)
        baselines["nearest_context"] = summarise(mse_nrm(near, vectors), cosine(near, vectors), rawvar, meannorm)
    report["baselines"] = baselines
    # reference lines, not baselines: what the teacher's own text carries through this AR (the format's ceiling,
    # on the same rows), and a codebook oracle that looks at the vector it predicts
    teacher = summary("teacher")
    report["reference_lines"] = {"teacher_explanation": teacher}
    report["av_over_teacher"] = main["fve_nrm"] / teacher["fve_nrm"] if teacher["fve_nrm"] > 0 else None
    docs_of_rows = [s.doc_id for s in samples]
    if cand_mse is not None:
        gain, lo, hi = paired_bootstrap(scores["explanation"]["mse_nrm"], cand_mse[:, 0], docs_of_rows, rawvar)
        # the gain as the pool grows: the pick among the greedy text and the first k - 1 samples
        ks = sorted({1, cfg.best_of, *(2**i for i in range(1, cfg.best_of.bit_length()))})
        report["best_of"] = {
            "n": cfg.best_of,
            "sample_temperature": cfg.sample_temperature,
            "greedy": summary("greedy"),
            "one_sample": summary("one_sample"),
            "greedy_picked_share": sum(j == 0 for j in picked) / n,
            "gain_over_greedy": {"fve_nrm": gain, "ci95": [lo, hi]},
            "curve": {str(k): float(fve_nrm(m, rawvar)) for k, m in best_of_curve(cand_mse, ks).items()},
        }
    if cfg.compare_ar:
        # the same AV text and vectors through another reader: an AR before and after training differ only there
        other = load_ar(cfg.compare_ar, device=cfg.device, dtype=cfg.dtype)
        read = {
            name: score_texts(other, variants[key], vectors)
            for name, key in (
                ("explanation", "explanation"),
                ("teacher_explanation", "teacher"),
                *((("greedy", "greedy"),) if cfg.best_of > 1 else ()),
            )
        }
        del other
        report["compare_ar"] = {
            "ar": str(cfg.compare_ar),
            **{name: summarise(x["mse_nrm"], x["cos"], rawvar, meannorm) for name, x in read.items()},
        }
        # this AR's fve minus the other's on the same text, with a document-bootstrap interval
        d, lo, hi = paired_bootstrap(
            scores["explanation"]["mse_nrm"], read["explanation"]["mse_nrm"], docs_of_rows, rawvar
        )
        report["compare_ar"]["this_minus_other"] = {"fve_nrm": d, "ci95": [lo, hi]}
        if cfg.best_of > 1:  # does the other AR also prefer the pick? (it did not choose it)
            d, lo, hi = paired_bootstrap(
                read["explanation"]["mse_nrm"], read["greedy"]["mse_nrm"], docs_of_rows, rawvar
            )
            report["compare_ar"]["pick_minus_greedy"] = {"fve_nrm": d, "ci95": [lo, hi]}
    if cfg.compare_nla:
        report["compare_nla"] = compare_nla(
            cfg, nla, vectors, scores["explanation"]["mse_nrm"], docs_of_rows, rawvar, meannorm
        )
    if cfg.train_data:
        from nlakit.dataset import read_table, vectors_of

        train = torch.from_numpy(vectors_of(read_table(cfg.train_data, ["activation_vector"]))).float()
        nn = nearest_training_vector(vectors, train)
        report["oracles"] = {
            "nearest_training_vector": summarise(mse_nrm(nn, vectors), cosine(nn, vectors), rawvar, meannorm)
        }

    # steganography probes: fve under each transform and its drop from the untouched explanation
    probes = {}
    for name, kind in (
        ("sentence_shuffle", "preserving"),
        ("synonyms", "preserving"),
        ("unquoted", "preserving"),
        ("quotes_removed", "content ablation"),
        ("word_shuffle", "destroying"),
        *((name, "content ablation") for name in SWAP_PROBES),
    ):
        if name not in scores:  # the line swaps exist for grounded-format explanations only
            continue
        s = summary(name)
        probes[name] = {**s, "kind": kind, "fve_drop": main["fve_nrm"] - s["fve_nrm"]}
    report["probes"] = probes
    lengths = [len(ar_tok.encode(t, add_special_tokens=False)) for t in texts]
    report["truncation"] = {
        str(k): summary(f"truncate_{k}")["fve_nrm"] for k in TRUNCATIONS if k < max(lengths, default=0)
    }
    report["truncation"]["full"] = main["fve_nrm"]

    # breakdowns
    per_fve = 1 - scores["explanation"]["mse_nrm"] / rawvar
    groups: dict[str, dict[str, list[float]]] = {"position": {}, "token_kind": {}}
    for s, f in zip(samples, per_fve.tolist(), strict=True):
        bucket = next((f"{lo}-{hi - 1}" if hi < 10**9 else f"{lo}+") for lo, hi in POSITION_BUCKETS if s.position < hi)
        groups["position"].setdefault(bucket, []).append(f)
        groups["token_kind"].setdefault(token_kind(s.token), []).append(f)
    report["breakdown"] = {
        g: {k: {"n": len(v), "fve_nrm": float(np.mean(v))} for k, v in sorted(d.items())} for g, d in groups.items()
    }
    words = load_dictionary()
    report["english_word_share"] = english_word_share(texts, words) if words else None
    report["explanation_tokens_median"] = float(np.median(lengths)) if lengths else 0.0
    report["empty_explanations"] = sum(not t.strip() for t in texts)

    report["round_trip"] = round_trip(nla, samples, vectors, logp_orig, scores["explanation"]["pred"], gen)
    report["steering"] = steering_suite(nla, cfg)
    report["samples"] = [
        {
            "doc_id": s.doc_id,
            "position": s.position,
            "token": s.token,
            "context_tail": s.context[-120:],
            "explanation": t,
            "fve_nrm": float(f),
        }
        for s, t, f in list(zip(samples, texts, per_fve.tolist(), strict=True))[:10]
    ]

    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report))
    plot_report(report, per_fve.numpy(), scores["explanation"]["cos"].numpy(), out)
    return report


def eval_candidates(nla: NLA, vectors: torch.Tensor, cfg: EvalConfig) -> list[list[str]]:
    """The report's protocol for explaining `vectors`, the same for every pair it compares: the greedy text first,
    then best_of - 1 seeded samples (`NLA.candidates`)."""
    return nla.candidates(
        vectors,
        cfg.best_of,
        max_new_tokens=cfg.max_new_tokens,
        temperature=0.0,
        batch_size=cfg.batch_size,
        sample_temperature=cfg.sample_temperature,
        seed=cfg.seed,
    )


def check_comparisons(cfg: EvalConfig, nla: NLA) -> None:
    """--compare-ar and --compare-nla checked from their sidecars before any work, so a wrong folder fails in a
    second rather than after the eval's generation. Target names are not compared: the same model may be named by a
    Hub id in one sidecar and a local name in another (the report records both)."""
    for option, path, sides in (
        ("--compare-ar", cfg.compare_ar, ("ar",)),
        ("--compare-nla", cfg.compare_nla, ("av", "ar")),
    ):
        if not path:
            continue
        root = resolve_nla_path(path)
        for side in sides:
            # --compare-ar also takes an AR folder itself, as load_ar does (an NLA folder has a pair sidecar)
            folder = root / side
            if option == "--compare-ar" and not (folder / META_NAME).is_file():
                folder = root
            if not (folder / META_NAME).is_file():
                raise NlakitError(
                    f"{option} {path} has no {side}/{META_NAME}: give an NLA folder with an {side.upper()}"
                )
            meta = read_model_meta(folder)
            layer = meta.extraction_layer_index
            if meta.d_model != nla.d_model or (layer >= 0 and nla.layer >= 0 and layer != nla.layer):
                raise NlakitError(
                    f"{option} {path}: its {side.upper()} reads d_model {meta.d_model} at layer {layer}, this NLA "
                    f"d_model {nla.d_model} at layer {nla.layer}: compare NLAs of the same activations"
                )


@torch.no_grad()
def compare_nla(
    cfg: EvalConfig,
    nla: NLA,
    vectors: torch.Tensor,
    mse: torch.Tensor,
    docs: list[str],
    rawvar: float,
    meannorm: float,
) -> dict:
    """Another NLA on the same positions: its AV explains each vector under the same protocol (cap, best-of, seed)
    and its own AR reads that text, so `this_minus_other` is the difference between the two pairs as a user would
    run them, with a document-bootstrap interval (--compare-ar, by contrast, changes only the reader). It loads in
    this NLA's dtype and placement; its own sidecar's injection scale applies (a per-AV setting), and both sides
    share this set's rawvar. Its folder is checked by `check_comparisons` before run_eval's work starts."""
    other = NLA.from_pretrained(
        cfg.compare_nla, device=cfg.device, dtype=nla.dtype, device_map=nla.device_map, target=cfg.target
    )
    candidates = eval_candidates(other, vectors, cfg)
    texts, _ = other.pick_best(candidates, vectors)
    read = other.score(texts, vectors)
    d, lo, hi = paired_bootstrap(mse, read["mse_nrm"], docs, rawvar)
    return {
        "nla": str(cfg.compare_nla),
        "target": other.av.meta.target or other.av.meta.base_checkpoint,
        "layer": other.layer,
        **summarise(read["mse_nrm"], read["cos"], rawvar, meannorm),
        "this_minus_other": {"fve_nrm": d, "ci95": [lo, hi]},
        "examples": texts[:3],
    }


@torch.no_grad()
def round_trip(nla: NLA, samples, vectors, logp_orig, reconstructions, gen: torch.Generator) -> dict:
    """KL(original || patched) of the next-token distribution when h is replaced by AR(AV(h)) (at h's norm; an
    empty explanation reconstructs to zero, which removes the stream), by the mean activation, or by a random
    vector of h's norm."""
    model = nla.target_lm()
    rec = match_norm(reconstructions, vectors)
    mean = vectors.mean(0, keepdim=True).expand_as(vectors)
    rand = match_norm(torch.randn(vectors.shape, generator=gen), vectors)
    kls: dict[str, list[float]] = {"reconstruction": [], "mean": [], "random": []}
    by_doc: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_doc.setdefault(s.doc_id, []).append(i)
    with progress_bar("eval: round-trip patching", total=len(samples)) as bar:
        for rows in by_doc.values():
            ids, pos = samples[rows[-1]].ids, [samples[i].position for i in rows]
            for name, vecs in (("reconstruction", rec), ("mean", mean), ("random", rand)):
                logq = next_token_logprobs(model, ids, pos, nla.layer, vecs[rows])
                kls[name] += kl_divergence(logp_orig[rows], logq).tolist()
            bar.advance(len(rows))
    return {name: {"kl_mean": float(np.mean(v)), "kl_median": float(np.median(v))} for name, v in kls.items()}


def steer_case_activation(nla: NLA, case: tuple) -> tuple[list[int], int, torch.Tensor]:
    """A steering case's prompt ids, the position it edits and the [1, d] activation there: the prompt's last token,
    or where a third field names the text the edit is made at (its last token); the effect is read at the prompt's
    end either way."""
    prompt = case[0]
    ids, acts = nla.activations(prompt)
    pos = len(ids) - 1 if len(case) < 3 else len(nla.tokenize(prompt[: prompt.index(case[2]) + len(case[2])])) - 1
    return ids, pos, acts[pos : pos + 1]


class SteerCase(NamedTuple):
    """A steering case made ready once, then read at every edit form and alpha."""

    prompt: str
    word: str
    ids: list[int]  # the prompt's token ids
    pos: int  # the position edited
    h: torch.Tensor  # [1, d] the residual there
    original: str  # the AV's explanation of h
    edits: dict[str, str]  # form -> the edited explanation
    rec: torch.Tensor  # [1 + forms, d] AR(original), then AR(edit) per form in EDIT_FORMS order
    rand: torch.Tensor  # [n_random, d] control directions
    target: int  # the first token of " word", whose log-prob is read
    word_h: torch.Tensor  # [1, d] `word_residual`, the no-NLA baseline's end point


@torch.no_grad()
def _steer_prepare(nla: NLA, cases, cfg: EvalConfig, gen: torch.Generator, n_random: int) -> list[SteerCase]:
    """Each case's activation, original explanation, both edits and their reconstructions, random directions, and
    the baseline's word residual."""
    tok = nla.target_tokenizer()
    prepared = []
    for case in cases:
        prompt, word = case[0], case[1]
        ids, pos, h = steer_case_activation(nla, case)
        original = nla.verbalize(h, max_new_tokens=cfg.max_new_tokens)[0] or "(empty)"
        edits = {form: edit_toward(original, word, form) for form in EDIT_FORMS}
        rec = nla.reconstruct([original, *edits.values()])
        rand = torch.randn(n_random, h.shape[-1], generator=gen)
        target = tok.encode(" " + word, add_special_tokens=False)[0]
        word_h = word_residual(nla, ids, pos, word)
        prepared.append(SteerCase(prompt, word, ids, pos, h, original, edits, rec, rand, target, word_h))
    return prepared


@torch.no_grad()
def word_residual(nla: NLA, ids: list[int], pos: int, word: str) -> torch.Tensor:
    """The layer-K residual [1, d] at the first token of " word" read right after position `pos` (the first token:
    the one whose log-prob steering measures). Its difference from the residual at `pos` is steering's baseline: an
    activation-addition direction a user can compute from the target alone, with no NLA."""
    first = nla.target_tokenizer().encode(" " + word, add_special_tokens=False)[:1]
    return nla.run_with_cache(ids[: pos + 1] + first).resid[-1:]


def _steer_setting(nla: NLA, prepared: list[SteerCase], form: str, alpha: float) -> dict:
    """One edit form at one alpha over prepared cases: each case's shift against its random directions, and the
    word-residual baseline's at the same alpha and rule."""
    model, tok = nla.target_lm(), nla.target_tokenizer()
    form_i = EDIT_FORMS.index(form)
    cases = []
    for c in prepared:
        delta = steering_vector(c.h, c.rec[:1], c.rec[1 + form_i : 2 + form_i], alpha)
        baseline = steering_vector(c.h, c.h, c.word_h, alpha)
        # the norm the rule gives both pushes (an edit that reconstructs to the original gives none, and the
        # controls keep theirs, so the baseline's win never depends on the edit form)
        ctrl = c.rand / c.rand.norm(dim=-1, keepdim=True) * alpha * c.h.float().norm()
        adds = torch.cat([torch.zeros_like(delta), delta, baseline, ctrl])
        read = [len(c.ids) - 1] * len(adds)
        logp = next_token_logprobs(model, c.ids, [c.pos] * len(adds), nla.layer, adds, mode="add", read=read)
        base, steered, by_word = logp[:3, c.target].tolist()
        rnd = logp[3:, c.target]
        cases.append(
            {
                "prompt": c.prompt,
                "concept": c.word,
                "original": c.original,
                "edited": c.edits[form],
                "shift": steered - base,
                "shift_random_mean": float(rnd.mean()) - base,
                "shift_random_max": float(rnd.max()) - base,
                "win": steered > float(rnd.max()),
                "top_token_steered": tok.decode([int(logp[1].argmax())]),
                "shift_baseline": by_word - base,
                "baseline_win": by_word > float(rnd.max()),
            }
        )
    wins = sum(c["win"] for c in cases)
    lo, hi = wilson_interval(wins, len(cases))
    return {
        "form": form,
        "alpha": alpha,
        "wins": wins,
        "n": len(cases),
        "win_rate_ci95": [lo, hi],
        "shift_mean": float(np.mean([c["shift"] for c in cases])),
        "shift_random_mean": float(np.mean([c["shift_random_mean"] for c in cases])),
        "baseline_wins": sum(c["baseline_win"] for c in cases),
        "baseline_shift_mean": float(np.mean([c["shift_baseline"] for c in cases])),
        "cases": cases,
    }


def steering_suite(nla: NLA, cfg: EvalConfig, n_random: int = 8) -> dict:
    """Text-edit steering at the prompt's last token (or the case's position), for each alpha and edit form:
    the log-prob shift of the concept's first token against `n_random` random directions of the same norm.
    A case is a win when its shift beats the best random direction; wins get a Wilson 95% interval.
    The setting (form, alpha) is chosen on the development cases; the test cases (and the rhyme case) are then
    read at it. The whole sweep on the test cases is reported too, for the shape of the curve."""
    # one generator each: the test cases' random directions do not depend on how many development cases there are
    dev_gen, test_gen = torch.Generator().manual_seed(cfg.seed + 1), torch.Generator().manual_seed(cfg.seed)
    settings = [(form, alpha) for form in EDIT_FORMS for alpha in cfg.steer_alphas]
    dev_cases = _steer_prepare(nla, cfg.steer_dev_cases or STEER_DEV_CASES, cfg, dev_gen, n_random)
    dev = {f"{f}@{a:g}": _steer_setting(nla, dev_cases, f, a) for f, a in settings}
    chosen = max(dev, key=lambda k: (dev[k]["wins"], dev[k]["shift_mean"]))
    test_cases = _steer_prepare(nla, cfg.steer_cases or [*STEER_CASES, RHYME_CASE], cfg, test_gen, n_random)
    sweep = {f"{f}@{a:g}": _steer_setting(nla, test_cases, f, a) for f, a in settings}
    return {
        "rule": "h + alpha * |h| * delta / |delta|, delta = AR(edited) - AR(original)",
        "baseline": "the word-residual direction: the target's own layer-K residual at the word read right after the "
        "edited token, minus the residual there, pushed by the same rule at the same alpha against the same random "
        "directions",
        "random_directions": n_random,
        "best": chosen,
        "dev": {k: {key: v[key] for key in ("form", "alpha", "wins", "n", "shift_mean")} for k, v in dev.items()},
        "note": f"chosen on {len(dev_cases)} development cases (wins there: {dev[chosen]['wins']}/{len(dev_cases)}), "
        "then read on the test cases",
        "sweep": sweep,
    }


# ---------------------------------------------------------------- outputs


def _f(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _gain(g: dict) -> str:
    return f"{g['fve_nrm']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"


def render_markdown(r: dict) -> str:
    lines = [
        f"# NLA evaluation: {r['target']} layer {r['layer']}",
        "",
        f"{r['n']} positions from {r['documents']} documents. fve_nrm = 1 - mse_nrm / rawvar, with rawvar "
        f"{r['rawvar']:.3f} measured on these vectors (training rawvar: {_f(r['rawvar_train'])}).",
        "",
        "| | fve_nrm | fve (meannorm) | cos | mse_nrm |",
        "|---|---|---|---|---|",
        f"| **NLA (AR(AV(h)))** | **{_f(r['fve_nrm'])}** | {_f(r['fve_meannorm'])} | {_f(r['cos_mean'])} "
        f"| {_f(r['mse_nrm'])} |",
    ]
    rows = [(f"baseline: {k}", v) for k, v in r["baselines"].items()]
    bo = r.get("best_of")
    if bo:
        rows += [("reference: greedy text alone", bo["greedy"]), ("reference: one sample alone", bo["one_sample"])]
    rows += [(f"reference: {k}", v) for k, v in r.get("reference_lines", {}).items()]
    rows += [(f"oracle: {k}", v) for k, v in r.get("oracles", {}).items()]
    for name, b in rows:
        lines.append(
            f"| {name} | {_f(b['fve_nrm'])} | {_f(b['fve_meannorm'])} | {_f(b['cos_mean'])} | {_f(b['mse_nrm'])} |"
        )
    lines += [
        "",
        "Baselines are what a user could run instead of an NLA. The teacher reference is the teacher's own text read "
        f"by this AR on the same rows (the format's ceiling; AV / teacher = {_f(r.get('av_over_teacher'))}). The "
        "oracle looks at the vector it predicts (nearest training vector): a bound, not a method.",
    ]
    if bo:
        lines += [
            "",
            f"Best of {bo['n']}: each position's text is the AR's pick among the greedy text and {bo['n'] - 1} "
            f"samples at temperature {bo['sample_temperature']:g} (the greedy text won {bo['greedy_picked_share']:.0%}"
            f"). Gain over the greedy text: {_gain(bo['gain_over_greedy'])} (95% interval from resampling documents)."
            " The pick is chosen by this AR, so another AR's reading below and the probes tell whether the gain is "
            "in the words.",
            "",
            "fve_nrm of the pick among the greedy text and the first k - 1 samples: "
            + ", ".join(f"k={k}: {_f(v)}" for k, v in bo["curve"].items()),
        ]
    if r.get("compare_ar"):
        c = r["compare_ar"]
        greedy = f", greedy text: {_f(c['greedy']['fve_nrm'])}" if "greedy" in c else ""
        lines += [
            "",
            f"The same explanations read by another AR ({c['ar']}): fve_nrm {_f(c['explanation']['fve_nrm'])} "
            f"(teacher's text: {_f(c['teacher_explanation']['fve_nrm'])}{greedy}). This AR minus the other on the "
            f"same text: {_gain(c['this_minus_other'])}."
            + (
                f" The other AR's gain from the pick: {_gain(c['pick_minus_greedy'])}."
                if "pick_minus_greedy" in c
                else ""
            ),
        ]
    if r.get("compare_nla"):
        c = r["compare_nla"]
        lines += [
            "",
            f"Another NLA on the same positions ({c['nla']}, its own AV's text read by its own AR, the same cap and "
            f"best-of): fve_nrm {_f(c['fve_nrm'])}. This NLA minus the other: {_gain(c['this_minus_other'])} (95% "
            "interval from resampling documents).",
        ]
    lines += [
        "",
        "## Steganography probes (AR re-scored on transformed explanations)",
        "",
        "| transform | kind | fve_nrm | drop |",
        "|---|---|---|---|",
    ]
    for name, p in r["probes"].items():
        lines.append(f"| {name} | {p['kind']} | {_f(p['fve_nrm'])} | {_f(p['fve_drop'])} |")
    lines += ["", "Truncation to the first k tokens: " + ", ".join(f"{k}: {_f(v)}" for k, v in r["truncation"].items())]
    rt = r["round_trip"]
    lines += [
        "",
        "## Causal checks",
        "",
        "Round-trip patching, KL(original || patched) of the next-token distribution (nats):",
        "",
        "| patched vector | KL mean | KL median |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {_f(v['kl_mean'])} | {_f(v['kl_median'])} |" for k, v in rt.items()]
    st = r["steering"]
    best = st["sweep"][st["best"]]
    lines += [
        "",
        f"Text-edit steering ({st['rule']}), against {st['random_directions']} random directions of the same norm. "
        "A win: the edit raises the concept's log-prob more than the best random direction. Baseline (no NLA): "
        f"{st['baseline']}.",
        "",
        "| edit form | alpha | wins | 95% CI of the win rate | mean shift (nats) | random mean | baseline wins "
        "| baseline mean shift |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {v['form']} | {v['alpha']:g} | {v['wins']}/{v['n']} | {v['win_rate_ci95'][0]:.2f}-"
        f"{v['win_rate_ci95'][1]:.2f} | {_f(v['shift_mean'])} | {_f(v['shift_random_mean'])} "
        f"| {v['baseline_wins']}/{v['n']} | {_f(v['baseline_shift_mean'])} |"
        for v in st["sweep"].values()
    ]
    lines += [
        "",
        f"Chosen setting: {st['best']} ({st['note']}): {best['wins']}/{best['n']} test cases won; the baseline, "
        f"read at the same alpha, won {best['baseline_wins']}/{best['n']}.",
        "",
        "| prompt | concept | shift | random mean | random max | top token after the edit | baseline shift |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['prompt']!r} | {c['concept']} | {_f(c['shift'])} | {_f(c['shift_random_mean'])} "
        f"| {_f(c['shift_random_max'])} | {c['top_token_steered']!r} | {_f(c['shift_baseline'])} |"
        for c in best["cases"]
    ]
    lines += ["", "## Breakdown", ""]
    for g, d in r["breakdown"].items():
        lines.append(f"- by {g}: " + "; ".join(f"{k} (n={v['n']}): {_f(v['fve_nrm'])}" for k, v in d.items()))
    lines += [
        f"- English dictionary words in explanations: {_f(r['english_word_share'])}; median length "
        f"{r['explanation_tokens_median']:.0f} tokens; empty: {r['empty_explanations']}",
        "",
        "## Samples",
        "",
    ]
    for s in r["samples"]:
        lines += [
            f"**{s['doc_id']} @ {s['position']}** (fve {s['fve_nrm']:.2f}) …{s['context_tail']!r}",
            "",
            "> " + s["explanation"].replace("\n", "\n> "),
            "",
        ]
    lines += ["Plots: fidelity.png, probes.png, causal.png" + (", best_of.png" if bo else ""), ""]
    return "\n".join(lines)


def plot_report(r: dict, per_fve: np.ndarray, per_cos: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].hist(np.clip(per_fve, -1, 1), bins=40, color="tab:blue")
    ax[0].axvline(r["fve_nrm"], color="k", ls="--", label=f"mean {r['fve_nrm']:.3f}")
    ax[0].set(title="fve_nrm per position (clipped to [-1, 1])", xlabel="fve_nrm")
    ax[0].legend()
    ax[1].hist(per_cos, bins=40, color="tab:green")
    ax[1].set(title="cosine(AR(AV(h)), h)", xlabel="cos")
    pos = r["breakdown"]["position"]
    ax[2].bar(list(pos), [v["fve_nrm"] for v in pos.values()])
    ax[2].set(title="fve_nrm by position", xlabel="position")
    fig.tight_layout()
    fig.savefig(out / "fidelity.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(13, 4))
    names = ["NLA", *r["baselines"], *r["probes"]]
    vals = [
        r["fve_nrm"],
        *(b["fve_nrm"] for b in r["baselines"].values()),
        *(p["fve_nrm"] for p in r["probes"].values()),
    ]
    colors = (
        ["tab:blue"]
        + ["tab:gray"] * len(r["baselines"])
        + [
            {"preserving": "tab:green", "content ablation": "tab:orange"}.get(p["kind"], "tab:red")
            for p in r["probes"].values()
        ]
    )
    ax[0].barh(names[::-1], vals[::-1], color=colors[::-1])
    ax[0].axvline(0, color="k", lw=0.8)
    ax[0].set(title="fve_nrm: NLA, baselines (grey), probes: preserving (green), ablation (orange), destroying (red)")
    trunc = {k: v for k, v in r["truncation"].items() if k != "full"}
    ax[1].plot([int(k) for k in trunc], list(trunc.values()), "o-", label="first k tokens")
    ax[1].axhline(r["fve_nrm"], color="k", ls="--", label="full explanation")
    # log scale needs a point on it: explanations shorter than the first cut leave only the full one
    ax[1].set(xscale="log" if trunc else "linear", title="fve_nrm against explanation length", xlabel="tokens kept")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "probes.png", dpi=100)
    plt.close(fig)

    if r.get("best_of"):
        bo = r["best_of"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([int(k) for k in bo["curve"]], list(bo["curve"].values()), "o-", label="AR's pick among k")
        ax.axhline(bo["one_sample"]["fve_nrm"], color="tab:gray", ls=":", label="one sample")
        ax.axhline(r["reference_lines"]["teacher_explanation"]["fve_nrm"], color="tab:green", ls="--", label="teacher")
        ax.set(xscale="log", xlabel="candidates k (greedy + k - 1 samples)", ylabel="fve_nrm", title="best of k")
        ax.minorticks_off()
        ax.set_xticks([int(k) for k in bo["curve"]], [str(k) for k in bo["curve"]])
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "best_of.png", dpi=100)
        plt.close(fig)

    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    rt = r["round_trip"]
    ax[0].bar(list(rt), [v["kl_mean"] for v in rt.values()], color=["tab:blue", "tab:gray", "tab:red"])
    # log scale only when every bar can be drawn on it (a random model can patch with KL 0)
    positive = all(v["kl_mean"] > 0 for v in rt.values())
    ax[0].set(title="round-trip patching: KL to the original (nats)", yscale="log" if positive else "linear")
    sweep = r["steering"]["sweep"]
    for form in dict.fromkeys(v["form"] for v in sweep.values()):
        pts = [(v["alpha"], v["wins"] / v["n"]) for v in sweep.values() if v["form"] == form]
        ax[1].plot(*zip(*pts, strict=True), "o-", label=f"{form} edit")
    by_alpha = {v["alpha"]: v["baseline_wins"] / v["n"] for v in sweep.values()}  # the same for every form
    ax[1].plot(list(by_alpha), list(by_alpha.values()), "s--", color="grey", label="word-residual baseline (no NLA)")
    ax[1].set(
        xscale="log",
        ylim=(-0.05, 1.05),
        xlabel="alpha (fraction of |h|)",
        ylabel="share of cases won",
        title="text-edit steering: wins over the best random direction",
    )
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "causal.png", dpi=100)
    plt.close(fig)
