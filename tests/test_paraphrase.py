import random

from nlakit.paraphrase import paraphrase, remove_quotes, shuffle_units, shuffle_words, synonym_rewrite, truncate_words

TEXT = (
    'An encyclopedic passage about Rome.\n\nThe phrase in progress is "the fall of".\n\nThe final token "of" follows.'
)


def test_shuffle_units_keeps_every_paragraph():
    out = shuffle_units(TEXT, random.Random(3))
    assert sorted(out.split("\n\n")) == sorted(TEXT.split("\n\n"))


def test_synonyms_change_words_not_structure():
    out = synonym_rewrite(TEXT, random.Random(0), rate=1.0)
    assert out != TEXT and out.count("\n\n") == 2
    assert "Rome" in out and "passage" not in out  # names kept, "passage" rewritten


def test_quotes_truncation_and_word_shuffle():
    assert '"' not in remove_quotes(TEXT)
    assert truncate_words(TEXT, 3) == "An encyclopedic passage"
    shuffled = shuffle_words(TEXT, random.Random(1))
    assert sorted(shuffled.split()) == sorted(TEXT.split()) and shuffled != TEXT


def test_paraphrase_is_seeded():
    assert paraphrase(TEXT, random.Random(5)) == paraphrase(TEXT, random.Random(5))
