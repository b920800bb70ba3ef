"""The real LLaDA / Dream / LLaDA2 model code (the fixtures) against its peers (issue 23 item 7).

- maskdiff's training loss through the HF adapter, with the family defaults ``load_hf_model``
  detects, equals dllm's own ``MDLMTrainer.compute_loss`` (tests/dllm_peer.py) run on the same
  real model with the same rate and mask uniforms; Dream's logit shift (maskdiff
  ``logit_shift=1``) is dllm's ``right_shift_logits=True``.
- the lm-evaluation-harness model ``maskdiff`` scores loglikelihood requests on Dream with its
  shift: the values are finite, equal ``maskdiff evaluate``'s scoring, and a closed check on a
  one-token continuation reads them off the raw model's logits shifted by hand.

The models are the tiny random ones of tests/test_hf_families.py, built from the fixture code
at test time; every test skips with one line where the fixtures are absent.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dllm_peer import dllm_ref_dir, peer_loss
from maskdiff.core.batch import Batch
from maskdiff.core.config import EstimatorConfig
from maskdiff.core.seeding import BatchRandomness
from maskdiff.hf.families import family_of
from test_hf_families import FAMILIES, MASK, VOCAB, family_dirs, load, needs_fixtures  # noqa: F401

B, L = 4, 12


def _batch():
    """Prompts of 1..4 tokens (so position 0 is never eligible: dllm then prepends no BOS)
    followed by a response; row 1 and 3 end in right padding."""
    g = torch.Generator().manual_seed(11)
    x0 = torch.randint(4, VOCAB, (B, L), generator=g)
    prompt = torch.tensor([1, 3, 2, 4])
    lengths = torch.tensor([L, L - 3, L, L - 2])
    pos = torch.arange(L)[None, :]
    attention = pos < lengths[:, None]
    x0 = torch.where(attention, x0, torch.zeros_like(x0))  # the pad id
    eligible = (pos >= prompt[:, None]) & attention
    return Batch(x0=x0, eligible=eligible, attention_mask=attention,
                 example_index=torch.arange(B))


def _captured_inputs(model):
    """Record the input_ids of every forward call of ``model`` (what dllm masked)."""
    seen = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    return seen, handle


def _ours(adapter, batch, randomness, **options):
    """maskdiff's loss under the dllm-sequence convention, through the adapter (optionally with
    other adapter options); also the mask it drew."""
    adapter = type(adapter)(adapter.model, dataclasses.replace(adapter.options, **options))
    est = EstimatorConfig().with_convention("dllm-sequence").build(mask_token_id=MASK)
    batch = dataclasses.replace(batch, eligible=adapter.options.eligible(batch.eligible))
    _, _, views = est.draw(batch, randomness)
    with torch.no_grad():
        return float(est(adapter, batch, randomness).loss), views[0].masked


def _dllm(model, batch, attention, u_t, u_mask, shift):
    """dllm's compute_loss (sequence normaliser, 1/t weights) on the real model, and the
    input_ids the model saw."""
    labels = torch.where(batch.eligible, batch.x0, torch.full_like(batch.x0, -100))
    seen, handle = _captured_inputs(model)
    try:
        with torch.no_grad():
            loss = peer_loss(model, batch.x0, labels, attention, u_t, u_mask, mask_token_id=MASK,
                             loss_norm_type="sequence", right_shift_logits=bool(shift))
    finally:
        handle.remove()
    return seen, float(loss)


@needs_fixtures
@pytest.mark.parametrize("name", FAMILIES)
def test_adapter_loss_equals_dllm_compute_loss_on_the_real_model(family_dirs, name):
    dllm_ref_dir()  # one-line skip without dllm's reference
    adapter, _, mask_id = load(family_dirs[name])
    adapter.eval()
    shift = family_of(adapter.model.config).logit_shift
    assert mask_id == MASK and adapter.options.logit_shift == shift == (name == "dream")
    batch = _batch()
    randomness = BatchRandomness.for_batch(seed=5, step=2, example_indices=range(B))
    u_t = randomness.rate_uniforms().float()
    u_mask = randomness.mask_uniforms(1, L)[0]
    # every rate above 0.2: dllm's weight 1/(t + 1e-6) is maskdiff's 1/t to 5e-6 relative
    assert float(1e-3 + (1 - 1e-3) * u_t.min()) > 0.2
    ours, masked = _ours(adapter, batch, randomness)

    # dllm hands its collator's attention mask to the model as it is: here the family's format
    # (LLaDA2 attends causally under a padded 2-D mask: test_llada2_...2d_mask below)
    attention = batch.attention_mask.long()
    if adapter.options.attention == "4d":
        attention = batch.attention_mask[:, None, None, :].expand(B, 1, L, L)
    seen, theirs = _dllm(adapter.model, batch, attention, u_t, u_mask, shift)
    # dllm ran the real model once, on the same masked positions (no BOS prepended)
    assert len(seen) == 1 and seen[0].shape == (B, L)
    assert torch.equal((seen[0] == MASK) & batch.eligible, masked) and masked.sum() >= 8
    assert math.isfinite(ours) and abs(ours - math.log(VOCAB)) < 2.5  # about log V per token
    assert abs(ours - theirs) < 1e-5 * abs(theirs), (name, ours, theirs)
    # a wrong shift (0 for Dream, 1 for LLaDA / LLaDA2) gives another number
    wrong, _ = _ours(adapter, batch, randomness, logit_shift=1 - shift)
    assert abs(wrong - theirs) > 1e-3, (name, wrong, theirs)


@needs_fixtures
def test_llada2_under_dllm_needs_the_4d_mask(family_dirs):
    """What the 4-D default buys: dllm's plain (B, L) mask equals maskdiff on an unpadded batch,
    but on a padded one LLaDA2 turns it causal and dllm's loss moves away."""
    dllm_ref_dir()
    adapter, _, _ = load(family_dirs["llada2_moe"])
    adapter.eval()
    randomness = BatchRandomness.for_batch(seed=5, step=2, example_indices=range(B))
    u_t, u_mask = randomness.rate_uniforms().float(), randomness.mask_uniforms(1, L)[0]
    padded = _batch()
    unpadded = dataclasses.replace(padded, attention_mask=torch.ones_like(padded.attention_mask),
                                   eligible=padded.eligible | (torch.arange(L) >= 4))
    for batch, equal in ((unpadded, True), (padded, False)):
        ours, _ = _ours(adapter, batch, randomness)
        _, theirs = _dllm(adapter.model, batch, batch.attention_mask.long(), u_t, u_mask, 0)
        assert (abs(ours - theirs) < 1e-5 * abs(theirs)) == equal, (equal, ours, theirs)
        if not equal:
            assert abs(ours - theirs) > 1e-3


# ----------------------------------------------------------------------------- lm-eval on Dream
def _harness(path):
    from lm_eval.api.registry import get_model

    import maskdiff.evaluation.harness  # noqa: F401  (registers the model)

    return get_model("maskdiff").create_from_arg_string(
        f"pretrained={path},trust_remote_code=True,rates=4,greedy_check=False,batch_size=4,"
        f"device=cpu")


def _requests(pairs):
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", doc={}, arguments=pair, idx=0) for pair in pairs]


@needs_fixtures
def test_lm_eval_loglikelihood_on_dream_reads_the_shifted_logits(family_dirs):
    """The harness model on Dream (logit_shift=1 detected): finite values, equal to maskdiff
    evaluate's scoring, and, for a one-token continuation, proportional to the log-probability
    the raw model gives at the position BEFORE it (Dream's shift, done by hand here): two
    one-token continuations scored as the first request see identical draws and identical
    inputs wherever the token is masked, so their ELBOs stand in the ratio of their log-probs."""
    pytest.importorskip("lm_eval", reason="lm_eval is not installed in this environment")
    from maskdiff.evaluation import load_eval_model, loglikelihoods

    path = family_dirs["dream"]
    first = _harness(path)
    assert first.lm.model.options.logit_shift == 1
    context = "In the beginning God"
    one_token = []
    for i in range(4, VOCAB):  # two ids whose text encodes back to that one id
        text = first.lm.tokenizer.decode([i])
        if text.strip() and first.lm.encode_continuation(text) == [i]:
            one_token.append((i, text))
        if len(one_token) == 2:
            break
    (a, text_a), (b, text_b) = one_token
    scored = first.loglikelihood(_requests([(context, text_a), (context, " created the")]))
    assert all(math.isfinite(ll) and ll < 0 for ll, _ in scored), scored
    # maskdiff evaluate's scoring of the same request (same seed, scheme, rates, draw index)
    with torch.no_grad():
        direct = loglikelihoods(load_eval_model(hf=path, trust_remote_code=True),
                                [(context, text_a)], rates=4, greedy_check=False)[0]
    assert direct.loglikelihood == scored[0][0]
    ll_b = _harness(path).loglikelihood(_requests([(context, text_b)]))[0][0]
    # by hand: the raw model on context + [MASK], Dream's prediction for the last position
    ids = torch.tensor([first.lm.encode_context(context) + [MASK]])
    with torch.no_grad():
        raw = torch.log_softmax(first.lm.model.model(input_ids=ids).logits[0].float(), dim=-1)
    shifted, unshifted = raw[-2], raw[-1]
    ratio = scored[0][0] / ll_b
    assert abs(ratio - float(shifted[a] / shifted[b])) < 1e-5 * abs(ratio), (ratio, shifted[[a, b]])
    assert abs(ratio - float(unshifted[a] / unshifted[b])) > 1e-3
