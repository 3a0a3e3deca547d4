from __future__ import annotations

import math
import random

import pytest
import torch

from nlakit.ar import AR, last_token_index
from nlakit.errors import NlakitError
from nlakit.extract import LayerCapture
from nlakit.meta import ModelMeta
from nlakit.models import load_backbone

K = 2


def _meta(**kw) -> ModelMeta:
    base = dict(
        role="ar",
        d_model=64,
        extraction_layer_index=K,
        injection_scale=None,
        mse_scale=math.sqrt(64),
        base_checkpoint="tiny",
        target="tiny",
    )
    base.update(kw)
    return ModelMeta(**base)


@pytest.fixture(scope="module")
def ar() -> AR:
    return AR.from_base("tiny", _meta(), dtype="float32")


def test_last_token_index_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert last_token_index(left).tolist() == [3, 3]


def test_identity_head_step0_equals_layer_k_residual(ar):
    """At init the AR predicts the target's own layer-K residual at the last token of its prompt."""
    text = "Paris is the capital of France."
    ids, mask = ar.encode([text])
    full = load_backbone("tiny", dtype="float32")
    cap = LayerCapture(full, [K])
    with torch.no_grad():
        full(input_ids=ids)
    torch.testing.assert_close(ar.reconstruct([text])[0], cap.outputs[K][0, -1], atol=1e-5, rtol=0)
    assert ar.backbone.config.num_hidden_layers == K + 1 and len(ar.backbone.layers) == K + 1


def test_batched_equals_one_by_one(ar):
    texts = ["short", "a somewhat longer explanation of things", "mid length text here", "x y"]
    batched = ar.reconstruct(texts, batch_size=4)
    single = torch.stack([ar.reconstruct([t])[0] for t in texts])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_empty_explanation_is_refused(ar):
    with pytest.raises(NlakitError, match="empty"):
        ar.reconstruct(["fine", "   "])


def test_save_load_roundtrip_and_sidecar_checks(ar, tmp_path):
    with torch.no_grad():
        ar.value_head.weight.mul_(0.5).add_(0.01)
    ar.save_pretrained(tmp_path / "ar")
    again = AR.from_pretrained(tmp_path / "ar", dtype="float32")
    texts = ["one explanation", "another, longer explanation"]
    torch.testing.assert_close(again.reconstruct(texts), ar.reconstruct(texts), atol=1e-5, rtol=0)
    with pytest.raises(NlakitError, match="needs K\\+1"):
        AR(again.backbone, again.tok, _meta(extraction_layer_index=3), again.value_head)
    with pytest.raises(NlakitError, match="d_model"):
        AR(again.backbone, again.tok, _meta(d_model=32), again.value_head)
    (tmp_path / "ar" / "value_head.safetensors").unlink()
    with pytest.raises(NlakitError, match="value head"):
        AR.from_pretrained(tmp_path / "ar")


def test_overlong_explanation_is_refused_not_truncated(ar):
    with pytest.raises(NlakitError, match="shorten it"):
        ar.encode(["word " * 2000])


def test_reference_v1_sidecar_layer_is_k():
    from nlakit.meta import model_meta_from_dict

    raw = {
        "kind": "nla_model",
        "role": "critic",
        "d_model": 64,
        "ar": {"num_hidden_layers": 20},
        "extraction": {"injection_scale": None, "mse_scale": "sqrt_d_model"},
    }
    meta = model_meta_from_dict(raw)
    assert meta.role == "ar" and meta.extraction_layer_index == 20 and meta.mse_scale == pytest.approx(8.0)


def test_full_weight_ar_with_wrong_layer_count_is_refused(ar, tmp_path):
    import yaml

    ar.save_pretrained(tmp_path / "ar")
    side = tmp_path / "ar" / "nla_meta.yaml"
    data = yaml.safe_load(side.read_text())
    data["extraction_layer_index"] = 1
    data["critic"]["extraction_layer_index"] = 1
    side.write_text(yaml.safe_dump(data))
    with pytest.raises(NlakitError, match="config.json has 3 layers"):
        AR.from_pretrained(tmp_path / "ar")


def test_quoted_span_takes_the_main_quote_whole_wherever_it_stands():
    from nlakit.ar import quoted_span
    from nlakit.paraphrase import shuffle_units

    av = (
        'Genre: prose on cells.\n\nThe current clause reads "such as bacterial, viral".\n\n'
        'The final token "viral" is a content word; the model expects "infections", "and", "diseases" next.'
    )
    assert quoted_span(av) == " such as bacterial, viral"
    # by length, not position: the final-token paragraph first (eval's sentence_shuffle probe) reads the same quote
    for seed in range(6):
        assert quoted_span(shuffle_units(av, random.Random(seed))) == " such as bacterial, viral"
    # a quoted clause holding marks itself, and the grounded format's one-line fields
    assert quoted_span('Prose.\nRecent words: "a big "red" one".\nCurrent token: "one"') == ' a big "red" one'
    assert quoted_span("The clause reads \u201cin the south\u201d.") == " in the south"
    assert quoted_span('The phrase is "left open\nnext line') == " left open"
    assert quoted_span("no quote at all") == quoted_span('empty "" quote') == ""


def test_quote_template_ends_the_prompt_with_the_quote():
    """With {quote}, the AR's last token is the quote's last token, so at init (identity head, no adapter) it predicts
    the target's own state after re-reading the quoted words."""
    from nlakit.meta import AR_QUOTE_TEMPLATE, AR_TEMPLATE, AV_TEMPLATE

    plain = AR.from_base("tiny", _meta(), dtype="float32")
    quoting = AR.from_base(
        "tiny", _meta(prompt_templates={"av": AV_TEMPLATE, "ar": AR_QUOTE_TEMPLATE}), dtype="float32"
    )
    text = 'The current clause reads "the capital of France".'
    assert quoting.prompts([text]) == [AR_TEMPLATE.format(explanation=text) + " the capital of France"]
    assert quoting.prompts(["no quote"]) == plain.prompts(["no quote"])
    full = load_backbone("tiny", dtype="float32")
    cap = LayerCapture(full, [K])
    with torch.no_grad():
        full(input_ids=quoting.encode([text])[0])
    torch.testing.assert_close(quoting.reconstruct([text])[0], cap.outputs[K][0, -1], atol=1e-5, rtol=0)
    assert not torch.allclose(quoting.reconstruct([text])[0], plain.reconstruct([text])[0])
