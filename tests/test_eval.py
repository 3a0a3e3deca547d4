"""`nla eval` on the tiny NLA: the report's arithmetic, its files, and the pure helpers it is built from."""

from __future__ import annotations

import json

import pytest
import torch

from nlakit.errors import NlakitError
from nlakit.eval import (
    EvalConfig,
    edit_toward,
    english_word_share,
    eval_documents,
    line_swaps,
    logit_lens_text,
    run_eval,
    token_kind,
)


def test_edit_forms():
    v2 = 'Prose about cats, milk and bowls.\nRecent words: "a bowl of".\nCurrent token: "of", a preposition.\n'
    v2 += 'Predicted next: "milk", "water" or "cream".'
    assert edit_toward(v2, "soup") == (
        'Prose about soup.\nRecent words: "a bowl of soup".\nCurrent token: "of", a preposition.\n'
        'Predicted next: "soup".'
    )
    # the edited quote stays the one a {quote} AR re-reads, though the word is shorter than the current token's
    from nlakit.ar import quoted_span

    assert quoted_span(edit_toward(v2.replace('"of"', '"having"'), "pie")).strip() == "a bowl of pie"
    assert edit_toward(v2, "soup", "append") == v2 + " The text is about soup."
    e = 'Last token "as". The model expects "a", "the" next.'
    assert edit_toward(e, "dog") == 'Last token "dog". The model expects "dog", "dog" next.'
    assert edit_toward("No quotes here.", "cat").endswith('expects "cat" next.')
    with pytest.raises(NlakitError, match="edit form"):
        edit_toward(e, "dog", "swap")


def test_line_swaps_ablate_one_claim_of_the_grounded_format():
    def grounded(topic, quote, token, pred):
        return (
            f'Prose about {topic}.\nRecent words: "{quote}".\nCurrent token: "{token}", a word.\n'
            f'Predicted next: "{pred}".'
        )

    a, b = grounded("cats", "a bowl of", "of", "milk"), grounded("ships", "sailed across the", "the", "sea")
    swaps = line_swaps([a, b, "free text"], [1, 0, 0])
    assert list(swaps) == ["swap_topic", "swap_recent_words", "swap_current_token", "swap_predicted_next"]
    assert swaps["swap_predicted_next"][0] == a.replace('"milk"', '"sea"')
    assert swaps["swap_topic"][1] == b.replace("ships", "cats")
    assert all(v[2] == "free text" for v in swaps.values())  # a text not in the format is kept whole
    # lines are matched by kind, not place: a reordered text swaps the same claim; a free-form partner swaps nothing
    reordered = "\n".join(b.split("\n")[::-1])
    swaps = line_swaps([a, reordered, "free text"], [1, 0, 0])
    assert swaps["swap_recent_words"][0] == a.replace("a bowl of", "sailed across the")
    assert swaps["swap_predicted_next"][1] == reordered.replace('"sea"', '"milk"')
    assert line_swaps([a, a, "free text"], [2, 2, 0])["swap_topic"][:2] == [a, a]
    assert line_swaps(["free text", "more free text", a], [1, 2, 0]) == {}  # mostly free-form: no line probes


def test_wilson_interval():
    from nlakit.eval import wilson_interval

    lo, hi = wilson_interval(6, 8)
    assert 0.40 < lo < 0.42 and 0.92 < hi < 0.94  # 0.409..0.929 by hand
    assert wilson_interval(0, 8)[0] == 0.0 and wilson_interval(8, 8)[1] == 1.0


def test_steering_vector_is_a_fraction_of_h():
    import torch

    from nlakit.steer import steering_vector

    h = torch.tensor([[3.0, 4.0]])  # |h| = 5
    v = steering_vector(h, torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 3.0]]), 0.5)
    assert torch.allclose(v, torch.tensor([[0.0, 2.5]]))  # 0.5 * 5 along delta = (0, 2)
    assert torch.equal(steering_vector(h, h, h, 1.0), torch.zeros(1, 2))  # no edit, no push


def test_small_helpers():
    assert english_word_share(["The cat sat", "zzqx the"], {"the", "cat", "sat"}) == pytest.approx(4 / 5)
    assert [token_kind(t) for t in (" the", "ing", "1990", ",", " ")] == [
        "word start",
        "word piece",
        "number",
        "punctuation",
        "whitespace",
    ]
    assert logit_lens_text([" a", "the"]) == 'The model expects "a", "the" next.'


def test_eval_reads_the_split_the_recipe_wrote(tiny_pairs, tiny_corpus):
    from nlakit.dataset import read_table

    val_ids = set(read_table(tiny_pairs["val"], ["doc_id"]).column("doc_id").to_pylist())
    docs = eval_documents(EvalConfig(out="x", corpus=str(tiny_corpus), docs_from=str(tiny_pairs["val"])))
    assert {d.id for d in docs} == val_ids
    # evaluating documents the AR/AV were trained on is refused, not reported as held out
    with pytest.raises(NlakitError, match="in the training data"):
        eval_documents(EvalConfig(out="x", corpus=str(tiny_corpus), train_data=str(tiny_pairs["train"])))
    eval_documents(
        EvalConfig(
            out="x", corpus=str(tiny_corpus), docs_from=str(tiny_pairs["val"]), train_data=str(tiny_pairs["train"])
        )
    )
    with pytest.raises(NlakitError, match="exactly one"):
        eval_documents(EvalConfig(out="x"))


def test_eval_reads_a_list_of_ids(tiny_pairs, tiny_corpus, tmp_path):
    """A recipe can keep its split as a text file of ids, so a fresh clone evaluates it without re-extracting."""
    from nlakit.dataset import read_table

    val_ids = sorted(set(read_table(tiny_pairs["val"], ["doc_id"]).column("doc_id").to_pylist()))
    listed = tmp_path / "val_ids.txt"
    listed.write_text("\n".join(val_ids) + "\n\n", encoding="utf-8")
    docs = eval_documents(EvalConfig(out="x", corpus=str(tiny_corpus), docs_from=str(listed)))
    assert sorted(d.id for d in docs) == val_ids
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(NlakitError, match="no document ids"):
        eval_documents(EvalConfig(out="x", corpus=str(tiny_corpus), docs_from=str(empty)))
    stranger = tmp_path / "stranger.txt"
    stranger.write_text("no-such-document\n", encoding="utf-8")
    with pytest.raises(NlakitError, match="not in corpus"):
        eval_documents(EvalConfig(out="x", corpus=str(tiny_corpus), docs_from=str(stranger)))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(NlakitError, match="not UTF-8"):
        eval_documents(EvalConfig(out="x", corpus=str(tiny_corpus), docs_from=str(binary)))


def test_eval_report(nla_dir, tiny_corpus, tiny_pairs, tmp_path):
    from nlakit.nla import NLA

    nla = NLA.from_pretrained(nla_dir[0], dtype="float32")
    cfg = EvalConfig(
        out=str(tmp_path / "rep"),
        corpus=str(tiny_corpus),
        docs_from=str(tiny_pairs["val"]),
        max_positions=24,
        min_position=2,
        max_new_tokens=24,
        steer_cases=[
            ("The cat sat on the", "mat"),
            ("I like to eat", "bread"),
            ("I saw a cat,\nIt sat on a", "mat", "cat,\n"),
        ],
        steer_dev_cases=[("The dog ran to the", "park"), ("She drank a glass of", "milk")],
        steer_alphas=(0.5, 1.0),
        train_data=str(tiny_pairs["train"]),
        compare_ar=str(nla_dir[0]),  # the same AR again: it must read the same explanations the same way
        compare_nla=str(nla_dir[0]),  # the same pair again, under the same protocol: the same text, the same figures
        dtype="float32",  # the compare AR loads in cfg.dtype; "auto" is bf16 on AVX-512 BF16 CPUs, unlike `nla` here
        best_of=3,
    )
    r = run_eval(cfg, nla)
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["n"] == r["n"] == 24 and saved["documents"] == 8  # 3 positions per document
    for key in ("fve_nrm", "cos_mean", "mse_nrm"):
        assert saved[key] == pytest.approx(r[key])
    assert r["fve_nrm"] == pytest.approx(1 - r["mse_nrm"] / r["rawvar"])
    # predicting the mean scores exactly the meannorm baseline
    assert r["baselines"]["mean"]["mse_nrm"] == pytest.approx(r["meannorm"], rel=1e-4)
    assert r["baselines"]["mean"]["fve_meannorm"] == pytest.approx(0.0, abs=1e-4)
    assert set(r["probes"]) == {"sentence_shuffle", "synonyms", "unquoted", "quotes_removed", "word_shuffle"}
    assert r["probes"]["quotes_removed"]["kind"] == "content ablation"
    assert set(r["baselines"]) == {"mean", "shuffled_activation", "logit_lens", "context", "nearest_context"}
    assert "nearest_training_vector" in r["oracles"] and "teacher_explanation" in r["reference_lines"]
    assert r["truncation"]["full"] == r["fve_nrm"]
    assert r["compare_ar"]["explanation"]["fve_nrm"] == pytest.approx(r["fve_nrm"], abs=1e-5)
    assert r["compare_ar"]["teacher_explanation"]["fve_nrm"] == pytest.approx(
        r["reference_lines"]["teacher_explanation"]["fve_nrm"], abs=1e-5
    )
    # the scored text is the AR's pick among greedy + 2 samples, so it reconstructs at least as well as the greedy
    bo = r["best_of"]
    assert bo["n"] == 3 and 0 <= bo["greedy_picked_share"] <= 1
    assert r["mse_nrm"] <= bo["greedy"]["mse_nrm"] + 1e-4 and r["mse_nrm"] <= bo["one_sample"]["mse_nrm"] + 1e-4
    assert r["compare_ar"]["greedy"]["fve_nrm"] == pytest.approx(bo["greedy"]["fve_nrm"], abs=1e-5)
    assert bo["curve"]["1"] == pytest.approx(bo["greedy"]["fve_nrm"]) and bo["curve"]["3"] == pytest.approx(
        r["fve_nrm"]
    )
    assert bo["curve"]["1"] <= bo["curve"]["2"] <= bo["curve"]["3"]
    lo, hi = bo["gain_over_greedy"]["ci95"]
    # the gain is a float64 mean of row differences, the two fve figures float32 means: equal to float32 rounding
    assert bo["gain_over_greedy"]["fve_nrm"] == pytest.approx(r["fve_nrm"] - bo["greedy"]["fve_nrm"], abs=1e-5)
    assert lo <= bo["gain_over_greedy"]["fve_nrm"] <= hi
    assert r["compare_ar"]["this_minus_other"]["fve_nrm"] == pytest.approx(0, abs=1e-5)  # the same AR twice
    assert r["compare_nla"]["fve_nrm"] == pytest.approx(r["fve_nrm"], abs=1e-5)
    assert r["compare_nla"]["this_minus_other"]["fve_nrm"] == pytest.approx(0, abs=1e-5)
    assert r["compare_nla"]["this_minus_other"]["ci95"] == pytest.approx([0, 0], abs=1e-5)
    assert r["compare_nla"]["layer"] == r["layer"] and len(r["compare_nla"]["examples"]) == 3
    assert (tmp_path / "rep" / "best_of.png").stat().st_size > 5000
    rt = r["round_trip"]
    assert all(v["kl_mean"] >= -1e-6 for v in rt.values())
    assert rt["random"]["kl_mean"] > 0
    sweep = r["steering"]["sweep"]
    assert set(sweep) == {"replace@0.5", "replace@1", "append@0.5", "append@1"}
    assert all(len(v["cases"]) == 3 and 0 <= v["wins"] <= 3 for v in sweep.values())
    # the no-NLA baseline depends on alpha, not on how the explanation is edited
    for a in ("0.5", "1"):
        rep, app = sweep[f"replace@{a}"], sweep[f"append@{a}"]
        assert [c["shift_baseline"] for c in rep["cases"]] == pytest.approx(
            [c["shift_baseline"] for c in app["cases"]], abs=1e-5
        )
        assert rep["baseline_wins"] == app["baseline_wins"]
    assert r["steering"]["best"] in sweep and set(r["steering"]["dev"]) == set(sweep)
    dev = r["steering"]["dev"]  # the setting is the development cases' best, whatever the test cases say
    assert r["steering"]["best"] == max(dev, key=lambda k: (dev[k]["wins"], dev[k]["shift_mean"]))
    assert all(v["n"] == 2 for v in dev.values())
    assert sum(v["n"] for v in r["breakdown"]["position"].values()) == 24
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "fve_nrm" in md and "Steganography" in md and "Round-trip" in md and "Another NLA" in md
    for png in ("fidelity.png", "probes.png", "causal.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 5000


def test_eval_cli_errors(tmp_path):
    from typer.testing import CliRunner

    from nlakit.cli import app

    bad = tmp_path / "docs.csv"
    bad.write_text("a,b\n")
    # inputs are checked before any model loads (the --nla folder here is not even an NLA)
    res = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "o"), "--texts", str(bad), "--nla", str(tmp_path)])
    assert isinstance(res.exception, NlakitError) and ".txt" in str(res.exception)


def test_best_of_picks_the_candidate_nearest_its_vector(nla_dir, tiny_pairs):
    from nlakit import dataset as ds
    from nlakit.nla import NLA

    nla = NLA.from_pretrained(nla_dir[0], dtype="float32")
    v = torch.from_numpy(ds.vectors_of(ds.read_table(tiny_pairs["val"]).slice(0, 6))).float()
    cands = nla.candidates(v, 4, max_new_tokens=16)
    assert [len(c) for c in cands] == [4] * 6
    assert [c[0] for c in cands] == nla.verbalize(v, max_new_tokens=16)  # greedy first
    assert cands == nla.candidates(v, 4, max_new_tokens=16)  # seeded
    assert any(len(set(c)) > 1 for c in cands)  # the samples differ
    texts, best = nla.pick_best(cands, v)
    each = torch.stack([nla.score([c[j] for c in cands], v)["mse_nrm"] for j in range(4)], 1)
    # the pick is a nearest candidate (scored in other batches, so compared with a tolerance, not by index)
    assert bool((each.gather(1, torch.tensor(best)[:, None])[:, 0] <= each.min(1).values + 1e-4).all())
    assert texts == [c[j] for c, j in zip(cands, best, strict=True)]
    assert nla.verbalize(v, best_of=4, max_new_tokens=16) == texts
    assert nla.pick_best([[t] for t in texts], v) == (texts, [0] * 6)


def test_compare_options_refuse_bad_folders_before_any_work(nla_dir, tiny_corpus, tmp_path):
    """A wrong --compare-nla/--compare-ar folder fails from its sidecars, before a position is read."""
    import shutil

    from nlakit.meta import read_yaml, write_yaml
    from nlakit.nla import NLA

    nla = NLA.from_pretrained(nla_dir[0], dtype="float32")
    av_only = tmp_path / "av_only"
    shutil.copytree(nla_dir[0] / "av", av_only / "av")
    other_layer = tmp_path / "other_layer"
    shutil.copytree(nla_dir[0] / "av", other_layer / "av")
    shutil.copytree(nla_dir[0] / "ar", other_layer / "ar")
    meta = read_yaml(other_layer / "ar" / "nla_meta.yaml")
    write_yaml(other_layer / "ar" / "nla_meta.yaml", {**meta, "extraction_layer_index": nla.layer + 1})
    cases = [
        ({"compare_nla": str(av_only)}, "--compare-nla .* has no ar/nla_meta.yaml"),
        ({"compare_ar": str(av_only)}, "--compare-ar .* has no ar/nla_meta.yaml"),
        ({"compare_nla": str(other_layer)}, f"its AR reads d_model {nla.d_model} at layer {nla.layer + 1}"),
        ({"compare_nla": str(tmp_path / "missing")}, "missing"),
    ]
    for kw, message in cases:
        cfg = EvalConfig(out=str(tmp_path / "rep"), corpus=str(tiny_corpus), max_positions=4, min_position=2, **kw)
        with pytest.raises(NlakitError, match=message):
            run_eval(cfg, nla)
    assert not (tmp_path / "rep").exists()  # refused before the report folder was made
    # an exported NLA folder (a pair sidecar at its root), and an AR folder itself, pass
    from nlakit.eval import check_comparisons
    from nlakit.nla import write_pair_meta

    shutil.copytree(nla_dir[0] / "ar", tmp_path / "pair" / "ar")
    shutil.copytree(nla_dir[0] / "av", tmp_path / "pair" / "av")
    write_pair_meta(tmp_path / "pair")
    for kw in ({"compare_ar": str(tmp_path / "pair")}, {"compare_ar": str(nla_dir[0] / "ar")}):
        check_comparisons(EvalConfig(out="x", compare_nla=str(tmp_path / "pair"), **kw), nla)


def test_compare_nla_sign(nla_dir, tmp_path):
    """this_minus_other is this NLA's fve minus the other's: a perfect reader here is ahead by the other's error."""
    from nlakit.eval import compare_nla
    from nlakit.nla import NLA

    nla = NLA.from_pretrained(nla_dir[0], dtype="float32")
    vectors = torch.randn(4, nla.d_model, generator=torch.Generator().manual_seed(0))
    cfg = EvalConfig(out=str(tmp_path / "rep"), compare_nla=str(nla_dir[0]), max_new_tokens=8)
    c = compare_nla(cfg, nla, vectors, torch.zeros(4), ["a", "a", "b", "b"], 2.0, 1.0)
    other_mse = nla.score(nla.verbalize(vectors, max_new_tokens=8), vectors)["mse_nrm"]
    assert float(other_mse.mean()) > 0
    assert c["this_minus_other"]["fve_nrm"] == pytest.approx(float(other_mse.mean()) / 2.0, abs=1e-5)
    assert c["fve_nrm"] == pytest.approx(1 - float(other_mse.mean()) / 2.0, abs=1e-5)


def test_word_residual_is_the_targets_own_state_at_the_word(nla_dir):
    from nlakit.eval import word_residual
    from nlakit.nla import NLA

    nla = NLA.from_pretrained(nla_dir[0], dtype="float32")
    ids, acts = nla.activations("The cat sat on the mat")
    word = nla.target_tokenizer().encode(" dog", add_special_tokens=False)
    v = word_residual(nla, ids, 2, "dog")  # after "The cat sat": the residual at the word's first token
    _, with_word = nla.activations(nla.target_tokenizer().decode(ids[:3] + word[:1]))
    assert v.shape == (1, acts.shape[1])
    assert torch.allclose(v, with_word[-1:], atol=1e-4)
    # causal: the positions before the word are the prompt's own, so the difference is the word's alone
    assert torch.allclose(nla.run_with_cache(ids[:3] + word[:1]).resid[:3], acts[:3], atol=1e-4)
