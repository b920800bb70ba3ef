"""Tokenisers: id layout, round trips, markup as single tokens, save/load (char and BPE)."""

from __future__ import annotations

import pytest

from maskdiff.data import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    control_ids,
    load_tokenizer,
    make_task,
    make_tokenizer,
    syntax_token_ids,
)
from maskdiff.data.tables import MARKUP_TAGS


def test_char_id_layout_is_deterministic():
    tok = CharTokenizer("cbaab", extra_tokens=("<td>", "</td>"))
    assert tok == CharTokenizer("abc", extra_tokens=("<td>", "</td>"))
    assert (tok.pad_id, tok.eos_id, tok.mask_id, tok.bos_id) == (0, 1, 2, None)
    assert [tok.token_to_id(t) for t in ("<td>", "</td>", "a", "b", "c")] == [3, 4, 5, 6, 7]
    assert tok.vocab_size == 8
    with_bos = CharTokenizer("abc", use_bos=True)
    assert with_bos.bos_id == 3 and with_bos.token_to_id("a") == 4
    assert isinstance(tok, Tokenizer)
    assert control_ids(with_bos) == {0, 1, 2, 3}


def test_char_markup_is_one_token_and_longest_match_wins():
    tok = CharTokenizer("<>/abcdt", extra_tokens=("<td>", "</td>", "<t"))
    ids = tok.encode("<td>a</td><tb")
    assert ids == [tok.token_to_id("<td>"), tok.token_to_id("a"), tok.token_to_id("</td>"),
                   tok.token_to_id("<t"), tok.token_to_id("b")]
    assert tok.decode(ids) == "<td>a</td><tb"


def test_char_round_trip_on_task_text_and_controls_never_encoded():
    for name in ("arithmetic", "table"):
        task = make_task(name, 30, 5, 5, seed=0)
        for example in task.train + task.val + task.test:
            for text in (example.prompt, example.response):
                assert task.tokenizer.decode(task.tokenizer.encode(text)) == text
    tok = CharTokenizer("<>eos ")
    ids = tok.encode("<eos> <eos>")
    assert tok.eos_id not in ids and len(ids) == 11  # literal text, one id per character
    assert tok.decode([tok.eos_id, tok.token_to_id("e"), tok.pad_id]) == "<eos>e<pad>"
    assert tok.decode([tok.eos_id, tok.token_to_id("e"), tok.pad_id], skip_special=True) == "e"


def test_char_errors_name_the_bad_input():
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match=r"character 'z' at position 2"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="token id 9 at position 1"):
        tok.decode([3, 9])
    with pytest.raises(ValueError, match=">= 2 characters"):
        CharTokenizer("ab", extra_tokens=("x",))
    with pytest.raises(ValueError, match="control tokens"):
        CharTokenizer("ab", extra_tokens=("<eos>",))
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")


def test_char_save_load(tmp_path):
    tok = make_tokenizer("table", use_bos=True)
    tok.save(tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(loaded, CharTokenizer) and loaded == tok
    text = "<table><tr><td>Oslo</td></tr></table>\nWhat is the total of Wins?"
    assert loaded.encode(text) == tok.encode(text)


@pytest.fixture(scope="module")
def bpe_task():
    task = make_task("table", 300, 20, 0, seed=1, tokenizer="bpe", vocab_size=400)
    return task


def test_bpe_round_trip_and_compression(bpe_task):
    tok = bpe_task.tokenizer
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 400
    for example in bpe_task.val:  # unseen in training
        for text in (example.prompt, example.response):
            assert tok.decode(tok.encode(text)) == text
    # Byte-level: any text round-trips, even characters never seen in training.
    odd = "naïve café — ✓ 東京\n\t  spaces  "
    assert tok.decode(tok.encode(odd)) == odd
    # Merges were learned: training text takes far fewer tokens than characters.
    train_text = bpe_task.train[0].prompt
    assert len(tok.encode(train_text)) < 0.6 * len(train_text)


def test_bpe_markup_single_tokens_and_controls_outside_text(bpe_task):
    tok = bpe_task.tokenizer
    tag_ids = syntax_token_ids(tok)
    assert len(tag_ids) == 8
    encoded = tok.encode("<table><tr><td>x</td></tr></table>")
    tags = ("<table>", "<tr>", "<td>", "</td>", "</tr>", "</table>")
    assert [i for i in encoded if i in tag_ids] == [tok.token_to_id(t) for t in tags]
    # Control ids lie past the byte-level vocabulary: no text encodes to them.
    assert min(control_ids(tok)) == tok.vocab_size - 3 and tok.bos_id is None
    assert not set(tok.encode("<eos><pad><mask>")) & control_ids(tok)
    hello = tok.encode("hello")
    assert tok.decode(hello + [tok.eos_id, tok.pad_id]) == "hello<eos><pad>"
    assert tok.decode(hello + [tok.eos_id] + hello, skip_special=True) == "hellohello"


def test_bpe_save_load(bpe_task, tmp_path):
    tok = bpe_task.tokenizer
    tok.save(tmp_path / "bpe.json")
    loaded = load_tokenizer(tmp_path / "bpe.json")
    assert isinstance(loaded, BPETokenizer) and loaded == tok
    assert loaded.vocab_size == tok.vocab_size and loaded.eos_id == tok.eos_id
    for example in bpe_task.val:
        assert loaded.encode(example.prompt) == tok.encode(example.prompt)


def test_bpe_train_on_plain_corpus_with_bos():
    texts = ["the cat sat on the mat. " * 4, "the dog sat on the log. " * 4] * 10
    tok = BPETokenizer.train(texts, vocab_size=300, use_bos=True)
    assert tok.bos_id == tok.vocab_size - 1
    assert tok.decode(tok.encode(texts[0])) == texts[0]
    with pytest.raises(ValueError, match="vocab_size must exceed 260"):
        BPETokenizer.train(texts, vocab_size=260, use_bos=True)


def test_load_tokenizer_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"type": "wordpiece"}')
    with pytest.raises(ValueError, match="unknown tokenizer type 'wordpiece'"):
        load_tokenizer(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("not json")
    with pytest.raises(ValueError, match="not a saved tokenizer"):
        load_tokenizer(tmp_path / "y.json")


def test_single_token_ids_rejects_split_tags():
    with pytest.raises(ValueError, match="not a single token"):
        syntax_token_ids(CharTokenizer("<>/tabledrh"))
    assert len(syntax_token_ids(CharTokenizer("ab", extra_tokens=MARKUP_TAGS))) == 8


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_decoding_an_id_outside_the_vocabulary_names_its_position(kind):
    tok = (CharTokenizer("abc") if kind == "char"
           else BPETokenizer.train(["hello world", "abc abd"] * 4, vocab_size=270))
    good = tok.encode("abc")
    assert tok.decode(good) == "abc"
    for bad in (tok.vocab_size, -1):
        with pytest.raises(ValueError, match=rf"^token id {bad} at position {len(good)} is "
                                             rf"outside \[0, vocab_size={tok.vocab_size}\)$"):
            tok.decode(good + [bad])


def test_bpe_ids_are_the_same_under_both_tokenizers_lines():
    """maskdiff's BPE gives these ids under tokenizers 0.23 (the default leg) and 0.22 (the
    transformers 4.57 leg, make test-tf4): a run trained on one line reads on the other."""
    from maskdiff.data.bpe import BPETokenizer
    from maskdiff.data.corpus import corpus_documents

    tok = BPETokenizer.train(corpus_documents("train")[:20], vocab_size=400, extra_tokens=["<sep>"])
    text = ("In the beginning God created the heaven and the earth.<sep> And God said, "
            "Let there be light: 12+7=19")
    assert tok.encode(text) == [
        41, 78, 260, 292, 71, 268, 78, 299, 340, 288, 280, 279, 273, 260, 322, 65, 361, 267, 260,
        358, 14, 0, 297, 261, 340, 327, 12, 221, 44, 69, 84, 260, 280, 292, 336, 365, 26, 221, 17,
        18, 11, 23, 29, 17, 25]
    assert tok.decode(tok.encode(text)) == text
