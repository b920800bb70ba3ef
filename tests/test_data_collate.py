"""Collation: eligibility, pad and overflow policies, SyRM syntax masks (docs/method.md §1)."""

from __future__ import annotations

import pytest
import torch

from maskdiff.data import (
    CharTokenizer,
    Collator,
    CollatorConfig,
    Example,
    make_task,
    syntax_token_ids,
)
from maskdiff.data.tables import MARKUP_TAGS

TOK = CharTokenizer("abcxyz ", use_bos=True)  # pad 0, eos 1, mask 2, bos 3, ' ' 4, a 5, ...


def ids(text: str) -> list[int]:
    return TOK.encode(text)


def collate(items, **config):
    return Collator(TOK, CollatorConfig(**config))(items)


def test_eos_policy_pads_with_eligible_attended_eos():
    batch = collate([(7, Example("ab", "xyz"))], max_len=8, pad_policy="eos")
    eos = TOK.eos_id
    assert batch.x0.tolist() == [ids("ab") + ids("xyz") + [eos, eos, eos]]
    assert batch.eligible.tolist() == [[False, False] + [True] * 6]
    assert batch.attention_mask.tolist() == [[True] * 8]
    assert batch.example_index.tolist() == [7]
    assert batch.syntax is None


def test_exclude_policy_pads_with_unattended_ineligible_pad():
    items = [(0, Example("ab", "xyz")), (1, Example("", "c"))]
    batch = collate(items, max_len=8, pad_policy="exclude")
    eos, pad = TOK.eos_id, TOK.pad_id
    assert batch.x0.tolist() == [
        ids("ab") + ids("xyz") + [eos, pad, pad],
        ids("c") + [eos] + [pad] * 6,
    ]
    assert batch.eligible.tolist() == [
        [False, False, True, True, True, True, False, False],
        [True, True] + [False] * 6,
    ]
    assert batch.attention_mask.tolist() == [[True] * 6 + [False] * 2, [True] * 2 + [False] * 6]


def test_eligible_is_exactly_the_response_in_a_mixed_batch():
    examples = [Example("a" * k, "x" * (5 - k) + "y") for k in range(5)]
    batch = collate(list(enumerate(examples)), max_len=10, pad_policy="exclude")
    for row, example in enumerate(examples):
        n_prompt, n_response = len(example.prompt), len(example.response) + 1  # + EOS
        expected = [n_prompt <= j < n_prompt + n_response for j in range(10)]
        assert batch.eligible[row].tolist() == expected
    # Row k: 6 - k response tokens + EOS, whatever the prompt length.
    assert batch.eligible.sum(1).tolist() == [7, 6, 5, 4, 3]


def test_pretraining_text_is_all_eligible_and_bos_never():
    batch = collate([(0, Example("", "abc"))], max_len=3, append_eos=False)
    assert batch.eligible.all() and batch.x0.tolist() == [ids("abc")]
    batch = collate([(0, Example("a", "bc"))], max_len=5, add_bos=True, pad_policy="exclude")
    assert batch.x0[0, 0].item() == TOK.bos_id
    assert batch.eligible.tolist() == [[False, False, True, True, True]]
    assert batch.attention_mask.tolist() == [[True] * 5]


def test_truncate_cuts_the_response_end_and_counts():
    collator = Collator(TOK, CollatorConfig(max_len=5, overflow="truncate"))
    examples = [Example("ab", "xyz"), Example("ab", "xyzxyz"), Example("a", "b")]
    batch = collator(list(enumerate(examples)))
    # Row 0 needed 6 (2 + 3 + EOS): loses its EOS. Row 1 needed 9: loses "xyz" and EOS.
    assert batch.x0.tolist()[:2] == [ids("abxyz"), ids("abxyz")]
    assert batch.eligible[:2].tolist() == [[False, False, True, True, True]] * 2
    assert (collator.n_truncated, collator.n_truncated_tokens) == (2, 1 + 4)
    assert collator.encode(2, Example("a", "b")).truncated is False
    collator.reset_counts()
    assert (collator.n_truncated, collator.n_truncated_tokens) == (0, 0)


def test_error_policy_names_the_example_and_its_length():
    collator = Collator(TOK, CollatorConfig(max_len=5, overflow="error"))
    with pytest.raises(ValueError, match=r"example 17 has 6 tokens .*max_len=5"):
        collator([(3, Example("a", "b")), (17, Example("ab", "xyz"))])


def test_a_prompt_with_no_room_raises_even_when_truncating():
    collator = Collator(TOK, CollatorConfig(max_len=3, overflow="truncate"))
    with pytest.raises(ValueError, match="example 4 .*prompt alone has 3 tokens"):
        collator([(4, Example("abc", "x"))])


def test_empty_response_raises_naming_the_example():
    with pytest.raises(ValueError, match="example 9: the response has no tokens"):
        collate([(9, Example("ab", ""))], max_len=8)


def test_out_of_vocab_ids_are_caught():
    class Broken(CharTokenizer):
        def encode(self, text: str) -> list[int]:
            return [self.vocab_size + 3] if text else []

    collator = Collator(Broken("ab"), CollatorConfig(max_len=4))
    with pytest.raises(ValueError, match=r"example 2 response: token id 8 .*vocab_size=5"):
        collator([(2, Example("", "a"))])


def test_pad_to_longest_only_with_exclude():
    batch = collate([(0, Example("a", "b")), (1, Example("", "xyz"))], max_len=50,
                    pad_policy="exclude", pad_to_longest=True)
    assert tuple(batch.x0.shape) == (2, 4)
    with pytest.raises(ValueError, match="pad_to_longest=True needs pad_policy='exclude'"):
        CollatorConfig(max_len=5, pad_to_longest=True)


def test_ignore_is_an_alias_of_exclude():
    """The Hugging Face path's older word: the same policy, the same batch, stored canonically."""
    items = [(0, Example("ab", "xyz")), (1, Example("", "c"))]
    config = CollatorConfig(max_len=8, pad_policy="ignore", pad_to_longest=True)
    assert config.pad_policy == "exclude"
    alias = collate(items, max_len=8, pad_policy="ignore", pad_to_longest=True)
    exclude = collate(items, max_len=8, pad_policy="exclude", pad_to_longest=True)
    for name in ("x0", "eligible", "attention_mask", "example_index"):
        assert torch.equal(getattr(alias, name), getattr(exclude, name))
    assert alias.attention_mask.tolist()[1] == [True, True, False, False, False, False]


@pytest.mark.parametrize(
    "field, value, message",
    [("max_len", 0, "max_len"), ("max_len", True, "max_len"),
     ("pad_policy", "left", "pad_policy"), ("overflow", "drop", "overflow")],
)
def test_config_validation_names_the_field(field, value, message):
    kwargs = {"max_len": 8, field: value}
    with pytest.raises(ValueError, match=message):
        CollatorConfig(**kwargs)


def test_bad_items_and_indices_raise():
    collator = Collator(TOK, CollatorConfig(max_len=8))
    with pytest.raises(ValueError, match="example_index must be >= 0"):
        collator([(-1, Example("a", "b"))])
    with pytest.raises(ValueError, match="pairs"):
        collator([Example("a", "b")])
    with pytest.raises(ValueError, match="empty"):
        collator([])
    with pytest.raises(ValueError, match="no bos_id"):
        Collator(CharTokenizer("ab"), CollatorConfig(max_len=8, add_bos=True))


def test_syrm_syntax_mask_is_exactly_the_prompt_markup():
    task = make_task("table", 8, 0, 0, seed=3, n_rows=3, n_cols=2)
    tok = task.tokenizer
    syntax_ids = syntax_token_ids(tok)
    assert len(syntax_ids) == len(MARKUP_TAGS) == 8 and task.syntax_ids() == syntax_ids
    config = CollatorConfig(max_len=200, pad_policy="exclude")
    collator = Collator(tok, config, syntax_ids=syntax_ids)
    batch = collator(list(enumerate(task.train)))
    for row, example in enumerate(task.train):
        n_prompt = len(tok.encode(example.prompt))
        marked = batch.syntax[row].nonzero().flatten().tolist()
        # Closed form for a 3x2 table: <table></table> + 4 rows x (<tr></tr>) + 4 x 3 cells x 2.
        assert len(marked) == 2 + 4 * 2 + 4 * 3 * 2 == 34
        assert len(marked) == sum(example.prompt.count(tag) for tag in MARKUP_TAGS)
        assert max(marked) < n_prompt  # never in the response
        assert all(tok.decode([batch.x0[row, j].item()]) in MARKUP_TAGS for j in marked)
        unmarked = [j for j in range(n_prompt) if j not in marked]
        assert all(batch.x0[row, j].item() not in syntax_ids for j in unmarked)
        # Syntax and response eligibility are disjoint; SyRM's union is their OR.
        assert not (batch.syntax[row] & batch.eligible[row]).any()


def test_collated_batch_survives_to_device_and_dtypes():
    batch = collate([(0, Example("ab", "xyz"))], max_len=8)
    assert batch.x0.dtype == torch.long and batch.eligible.dtype == torch.bool
    assert batch.attention_mask.dtype == torch.bool and batch.example_index.dtype == torch.long
    assert len(batch.to("cpu")) == 1


def test_task_ids_helpers():
    arithmetic = make_task("arithmetic", 2, 0, 0, seed=0)
    assert arithmetic.syntax_ids() is None
    assert arithmetic.delimiter_ids() == {arithmetic.tokenizer.token_to_id("#")}
    batch = Collator(arithmetic.tokenizer, CollatorConfig(max_len=160),
                     syntax_ids=arithmetic.syntax_ids())(list(enumerate(arithmetic.train)))
    assert batch.syntax is None
