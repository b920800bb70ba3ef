"""Greedy block diffusion decoding and greedy causal decoding (maskdiff/generate.py, docs/method.md §8)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskdiff.training.generate import generate_causal, generate_diffusion, transfer_schedule
from maskdiff.models import TransformerConfig, build_model

VOCAB = 8
MASK = 7


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: with 2 intra-op threads on a loaded 2-core machine, OpenMP spin-waiting made
    # these tests ~50x slower (measured 0.3 s vs 16.7 s for 30 training steps).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class TableModel(nn.Module):
    """Mock whose prediction and confidence at each position come from fixed tables.

    At (row b, position i) the argmax is ``token[b, i]`` with logit ``strength[b, i]`` (others 0),
    so its softmax confidence ``e^s / (e^s + V - 1)`` increases with the strength. Every call
    records the input ids, the attention mask, and the grad/training state it ran under.
    """

    def __init__(self, token: torch.Tensor, strength: torch.Tensor, mask_logit: float = -9.0):
        super().__init__()
        self.token, self.strength, self.mask_logit = token, strength, mask_logit
        self.inputs: list[torch.Tensor] = []
        self.attention: list[torch.Tensor | None] = []
        self.states: list[tuple[bool, bool]] = []

    def forward(self, input_ids, attention_mask=None):
        self.inputs.append(input_ids.clone())
        self.attention.append(None if attention_mask is None else attention_mask.clone())
        self.states.append((torch.is_grad_enabled(), self.training))
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, VOCAB)
        logits.scatter_(2, self.token[:, :length, None], self.strength[:, :length, None])
        logits[..., MASK] = self.mask_logit
        return logits


def position_model(batch: int, length: int, **kwargs) -> TableModel:
    """Confidence strictly increasing with position; token at position i is i % (VOCAB - 1)."""
    positions = torch.arange(length).repeat(batch, 1)
    return TableModel(positions % (VOCAB - 1), 1.0 + 0.1 * positions.float(), **kwargs)


def masked_positions(ids: torch.Tensor, row: int = 0) -> set[int]:
    return set(torch.nonzero(ids[row] == MASK).flatten().tolist())


def committed_per_call(model: TableModel, final: torch.Tensor) -> list[set[int]]:
    """Positions each model call's step unmasked (compare the input of call k with call k+1)."""
    states = model.inputs + [final]
    return [masked_positions(a) - masked_positions(b) for a, b in zip(states, states[1:])]


# ---------------------------------------------------------------- the schedule


@pytest.mark.parametrize(
    "n_masked, steps, expected",
    [
        (4, 2, [2, 2]),
        (5, 3, [2, 2, 1]),
        (7, 3, [3, 2, 2]),
        (32, 4, [8, 8, 8, 8]),
        (3, 5, [1, 1, 1, 0, 0]),
        (0, 2, [0, 0]),
        (1, 1, [1]),
    ],
)
def test_transfer_schedule_is_llada_get_num_transfer_tokens(n_masked, steps, expected):
    assert transfer_schedule(n_masked, steps) == expected


@pytest.mark.parametrize("n_masked, steps", [(-1, 2), (3, 0), (2.0, 1), (3, True)])
def test_transfer_schedule_rejects_bad_arguments(n_masked, steps):
    with pytest.raises(ValueError):
        transfer_schedule(n_masked, steps)


# ---------------------------------------------------------------- unmasking order


def test_order_within_and_across_blocks():
    # P = 2, gen 8 = two blocks of 4, 4 steps = 2 per block, 2 tokens per step. Confidence grows
    # with position, so within a block the right half goes first; block 2 waits for block 1.
    prompt = torch.tensor([[3, 4]])
    model = position_model(1, 10)
    out = generate_diffusion(model, prompt, gen_length=8, steps=4, block_length=4,
                             mask_token_id=MASK)
    assert committed_per_call(model, out) == [{4, 5}, {2, 3}, {8, 9}, {6, 7}]
    # masked before each call: block 2 (positions 6..9) untouched while block 1 is decoded
    assert [masked_positions(x) for x in model.inputs] == [
        set(range(2, 10)), {2, 3, 6, 7, 8, 9}, {6, 7, 8, 9}, {6, 7},
    ]
    assert out.tolist() == [[3, 4, 2, 3, 4, 5, 6, 0, 1, 2]]  # token i % 7 at position i


def test_uneven_schedule_and_per_row_confidence_table():
    # One block of 5, 3 steps: counts [2, 2, 1]. Row 0 prefers the left, row 1 a fixed shuffle.
    strength = torch.tensor([
        [0.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        [0.0, 2.0, 5.0, 1.0, 4.0, 3.0],
    ])
    token = torch.tensor([[0, 1, 2, 3, 4, 5], [6, 5, 4, 3, 2, 1]])
    model = TableModel(token, strength)
    out = generate_diffusion(model, torch.tensor([[0], [6]]), gen_length=5, steps=3,
                             block_length=5, mask_token_id=MASK)
    assert len(model.inputs) == 3
    states = model.inputs + [out]
    for row, expected in [(0, [{1, 2}, {3, 4}, {5}]), (1, [{2, 4}, {5, 1}, {3}])]:
        steps = [masked_positions(a, row) - masked_positions(b, row)
                 for a, b in zip(states, states[1:])]
        assert steps == expected
    assert out.tolist() == token.tolist()


def test_schedule_counts_with_several_blocks():
    # gen 12 = 3 blocks of 4; 9 steps = 3 per block: counts [2, 1, 1] in every block.
    model = position_model(1, 13)
    out = generate_diffusion(model, torch.tensor([[1]]), gen_length=12, steps=9, block_length=4,
                             mask_token_id=MASK)
    assert [len(s) for s in committed_per_call(model, out)] == [2, 1, 1] * 3
    assert committed_per_call(model, out)[:3] == [{3, 4}, {2}, {1}]


def test_more_steps_than_tokens_skips_empty_steps():
    # block of 2 with 4 steps per block: schedule [1, 1, 0, 0]; empty steps cost no forward pass.
    model = position_model(1, 5)
    out = generate_diffusion(model, torch.tensor([[1]]), gen_length=4, steps=8, block_length=2,
                             mask_token_id=MASK)
    assert committed_per_call(model, out) == [{2}, {1}, {4}, {3}]
    assert MASK not in out.tolist()[0]


def test_equal_confidence_resolves_leftmost_first():
    token = torch.full((1, 7), 3)
    model = TableModel(token, torch.full((1, 7), 2.0))
    out = generate_diffusion(model, torch.tensor([[1]]), gen_length=6, steps=3, block_length=6,
                             mask_token_id=MASK)
    assert committed_per_call(model, out) == [{1, 2}, {3, 4}, {5, 6}]


def test_mask_token_is_never_committed():
    # The mock's favourite everywhere is MASK; the decoder must take the runner-up instead.
    model = position_model(1, 5, mask_logit=50.0)
    out = generate_diffusion(model, torch.tensor([[0]]), gen_length=4, steps=2, block_length=4,
                             mask_token_id=MASK)
    assert out.tolist() == [[0, 1, 2, 3, 4]]
    assert committed_per_call(model, out) == [{3, 4}, {1, 2}]


class CountingModel(nn.Module):
    """Predicts, everywhere, the number of already unmasked generated positions (input-dependent)."""

    def __init__(self, prompt_length: int):
        super().__init__()
        self.prompt_length = prompt_length

    def forward(self, input_ids, attention_mask=None):
        done = (input_ids[:, self.prompt_length:] != MASK).sum(dim=1)
        logits = torch.zeros(*input_ids.shape, VOCAB)
        strength = 1.0 + 0.1 * torch.arange(input_ids.shape[1]).float()  # right first
        logits.scatter_(2, done[:, None, None].expand(-1, input_ids.shape[1], 1),
                        strength.expand(input_ids.shape[0], -1)[..., None])
        return logits


def test_model_sees_the_updated_sequence_every_step():
    out = generate_diffusion(CountingModel(1), torch.tensor([[6]]), gen_length=6, steps=6,
                             block_length=3, mask_token_id=MASK)
    # one token per step, right to left within a block: position 3 first (0 done), then 2, 1;
    # block 2 likewise with 3, 4, 5 already done.
    assert out.tolist() == [[6, 2, 1, 0, 5, 4, 3]]


# ---------------------------------------------------------------- contract details


def test_prompt_kept_attention_extended_and_mode_restored():
    model = position_model(2, 7)
    model.train()
    prompt = torch.tensor([[0, 5, 6], [2, 3, 4]])
    prompt_attention = torch.tensor([[False, True, True], [True, True, True]])
    with torch.enable_grad():
        out = generate_diffusion(model, prompt, gen_length=4, steps=2, block_length=4,
                                 mask_token_id=MASK, prompt_attention=prompt_attention)
    assert out.shape == (2, 7) and out.dtype == torch.long
    assert torch.equal(out[:, :3], prompt)
    expected_attention = torch.cat((prompt_attention, torch.ones(2, 4, dtype=torch.bool)), 1)
    assert all(torch.equal(a, expected_attention) for a in model.attention)
    assert model.states == [(False, False)] * 2  # no grad, eval mode inside
    assert model.training  # and training mode restored
    model.eval()
    generate_diffusion(model, prompt, gen_length=4, steps=2, block_length=4, mask_token_id=MASK)
    assert not model.training
    assert model.attention[-1] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(gen_length=8, steps=3, block_length=4), r"steps=3.*n_blocks=2"),
        (dict(gen_length=8, steps=4, block_length=3), r"gen_length=8.*block_length=3"),
        (dict(gen_length=0, steps=4, block_length=4), "gen_length"),
        (dict(gen_length=8, steps=0, block_length=4), "steps"),
        (dict(gen_length=8, steps=4, block_length=-4), "block_length"),
    ],
)
def test_diffusion_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_diffusion(position_model(1, 9), torch.tensor([[1]]), mask_token_id=MASK, **kwargs)


def test_diffusion_rejects_bad_prompt_and_mask_id():
    model = position_model(1, 9)
    settings = dict(gen_length=4, steps=2, block_length=4)
    with pytest.raises(ValueError, match="prompt_ids"):
        generate_diffusion(model, torch.tensor([1, 2]), mask_token_id=MASK, **settings)
    with pytest.raises(ValueError, match="long"):
        generate_diffusion(model, torch.tensor([[1.0]]), mask_token_id=MASK, **settings)
    with pytest.raises(ValueError, match="prompt_attention"):
        generate_diffusion(model, torch.tensor([[1]]), mask_token_id=MASK,
                           prompt_attention=torch.ones(1, 2, dtype=torch.bool), **settings)
    with pytest.raises(ValueError, match="mask_token_id"):
        generate_diffusion(model, torch.tensor([[1]]), mask_token_id=VOCAB, **settings)


def test_diffusion_with_the_real_model_is_deterministic_and_complete():
    torch.manual_seed(0)
    model = build_model(TransformerConfig(vocab_size=VOCAB, max_len=16, d_model=32, n_layers=2,
                                          n_heads=4, mask_token_id=MASK))
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    first = generate_diffusion(model, prompt, gen_length=8, steps=4, block_length=4,
                               mask_token_id=MASK)
    second = generate_diffusion(model, prompt, gen_length=8, steps=4, block_length=4,
                                mask_token_id=MASK)
    assert torch.equal(first, second) and first.shape == (2, 11)
    assert not (first == MASK).any()


# ---------------------------------------------------------------- causal decoding


class SuccessorModel(nn.Module):
    """Mock causal model: at every position the argmax is (token + 1) % V, or a row-fixed jump."""

    def __init__(self, step: torch.Tensor | None = None):
        super().__init__()
        self.step = step
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        step = 1 if self.step is None else self.step[:, None]
        return nn.functional.one_hot((input_ids + step) % VOCAB, VOCAB).float()


def test_causal_greedy_reproduces_argmax_continuation():
    out = generate_causal(SuccessorModel(), torch.tensor([[2, 3], [6, 0]]), max_new_tokens=4)
    assert out.tolist() == [[2, 3, 4, 5, 6, 7], [6, 0, 1, 2, 3, 4]]


def test_causal_stops_at_eos_per_row_and_pads_with_eos():
    model = SuccessorModel(step=torch.tensor([1, 2]))
    out = generate_causal(model, torch.tensor([[3], [2]]), max_new_tokens=6, eos_id=5)
    # row 0: 4, 5(eos) then eos; row 1: 4, 6, 0, 2, 4, 6 never meets 5
    assert out.tolist() == [[3, 4, 5, 5, 5, 5, 5], [2, 4, 6, 0, 2, 4, 6]]
    assert model.calls == 6


def test_causal_stops_early_when_every_row_is_done():
    model = SuccessorModel()
    out = generate_causal(model, torch.tensor([[3], [4]]), max_new_tokens=6, eos_id=5)
    assert out.tolist() == [[3, 4, 5, 5, 5, 5, 5], [4, 5, 5, 5, 5, 5, 5]]
    assert model.calls == 2


def test_causal_matches_a_reference_loop_on_the_real_twin():
    torch.manual_seed(1)
    model = build_model(TransformerConfig(vocab_size=VOCAB, max_len=16, d_model=32, n_layers=2,
                                          n_heads=4, causal=True)).train()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = generate_causal(model, prompt, max_new_tokens=5)
    assert model.training
    model.eval()
    reference = prompt
    with torch.no_grad():
        for _ in range(5):
            next_token = model(reference)[:, -1].argmax(-1, keepdim=True)
            reference = torch.cat((reference, next_token), dim=1)
    assert torch.equal(out, reference)


def test_causal_extends_prompt_attention_and_rejects_bad_input():
    seen = []

    class Recorder(SuccessorModel):
        def forward(self, input_ids, attention_mask=None):
            seen.append(attention_mask.clone())
            return super().forward(input_ids, attention_mask)

    generate_causal(Recorder(), torch.tensor([[0, 1]]), max_new_tokens=2,
                    prompt_attention=torch.tensor([[False, True]]))
    assert [a.tolist() for a in seen] == [[[False, True]], [[False, True, True]]]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_causal(SuccessorModel(), torch.tensor([[1]]), max_new_tokens=0)
    with pytest.raises(ValueError, match="eos_id"):
        generate_causal(SuccessorModel(), torch.tensor([[1]]), max_new_tokens=2, eos_id=-1)
    with pytest.raises(ValueError, match="at least one token"):
        generate_causal(SuccessorModel(), torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
