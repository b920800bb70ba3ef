"""Gradient-targeted P-POTS (docs/method.md §4 [beyond] "Gradient-targeted densities"): the free
logit-gradient proxies, the tracker, the exact-gradient design and the gradient tr Cov, checked
against closed forms on a model whose logits are its parameters."""

import numpy as np
import pytest
import torch

from maskdiff.core.batch import Batch
from maskdiff.core.masking import Bernoulli, Mirror
from maskdiff.core.methods import get_method, method_config
from maskdiff.core.objective import Estimator, logit_gradient_norms
from maskdiff.core.samplers import Importance, Uniform
from maskdiff.diagnostics.gradient import paired_difference
from maskdiff.diagnostics.measure import estimator_gradient_variance
from maskdiff.diagnostics.nested import nested_losses, rates_on_grid
from maskdiff.diagnostics.probe import estimator_gradient_fn
from maskdiff.experiments.gradient_targets import measure_gradient_targets
from maskdiff.ppots import SecondMomentTracker, density_for_method, fit_ppots, save_ppots_json

L, V, A, EPS = 12, 6, 4, 0.02  # positions, vocabulary (the mask id is V), examples, rate floor


class FreeLogits(torch.nn.Module):
    """``logits[b, i] = θ_i + β``: per-position parameters and a shared output bias, ignoring
    the input. With Bernoulli masks at rate t and ``N = L``: ``∇θ_i l = m_i (s_i − e_{x_i})/(N t)``,
    so ``E[‖∇θ l‖² | t] = C/(N² t)`` with ``C = Σ_i ‖s_i − e_{x_i}‖²``, and
    ``E[l² | t] = (Σ a_i²/t + (Σ a_i)² − Σ a_i²)/N²`` with ``a_i = −log s_i[x_i]``."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.randn(L, V, generator=torch.Generator().manual_seed(0)) * 1.5)
        self.bias = torch.nn.Parameter(torch.zeros(V))

    def forward(self, input_ids, attention_mask):
        return (self.theta + self.bias).expand(input_ids.shape[0], L, V)


@pytest.fixture(scope="module")
def setup():
    model = FreeLogits()
    x0 = torch.randint(0, V, (A, L), generator=torch.Generator().manual_seed(1))
    eligible = torch.ones(A, L, dtype=torch.bool)
    batch = Batch(x0=x0, eligible=eligible, attention_mask=eligible.clone(),
                  example_index=torch.arange(A))
    s = torch.softmax(model.theta.detach().double(), -1)
    onehot = torch.nn.functional.one_hot(x0, V).double()
    c_bar = float(((s - onehot) ** 2).sum((1, 2)).mean())  # mean over examples of C
    a = -torch.log((s * onehot).sum(-1))  # (A, L) token cross-entropies
    closed = {
        "gradient": lambda t: c_bar / (L**2 * t),
        "loss": lambda t: float(((a**2).sum(1).mean())) / (L**2 * t)
        + float((a.sum(1) ** 2 - (a**2).sum(1)).mean()) / L**2,
        "mean_grad_sq": float(((s - onehot.mean(0)) ** 2).sum()) / L**2,  # ‖∇θ L‖²
        "c_bar": c_bar,
    }
    return model, batch, closed


def closed_trace_cov(sampler, closed) -> float:
    """``tr Cov = ∫ E[‖∇l‖² | t] q²/p dt − ‖∇L‖²`` (q = 1/(1 − eps)) by quadrature on the
    sampler's own (mixed, tabulated) density; the θ part only."""
    t = np.geomspace(EPS, 1.0, 200_001)
    q = 1.0 / (1.0 - EPS)
    p = sampler.pdf(torch.from_numpy(t)).numpy() if hasattr(sampler, "pdf") else np.full_like(t, q)
    return float(np.trapezoid(closed["gradient"](t) * q * q / p, t)) - closed["mean_grad_sq"]


def test_the_proxies_are_the_exact_gradient_norms_when_the_logits_are_the_parameters(setup):
    model, batch, _ = setup
    probe = Estimator(rate_sampler=Uniform(eps=EPS), masker=Bernoulli(), mask_token_id=V)
    grid = rates_on_grid(6, EPS)
    values = {s: nested_losses(estimator_gradient_fn(model, batch, probe, statistic=s),
                               n_examples=A, rates=grid, n_masks=3, progress=False)
              for s in ("gradient", "logits", "bias")}
    # ‖∇(θ, β) l‖² = ‖∇θ l‖² + ‖∇β l‖²: the logits proxy is the first, the bias proxy the second.
    np.testing.assert_allclose(values["gradient"] ** 2, values["logits"] ** 2 + values["bias"] ** 2,
                               rtol=1e-4, atol=1e-7)
    assert values["bias"].max() > 0.05 * values["logits"].max()  # the check is not vacuous


def test_the_estimator_returns_the_proxy_only_when_asked_and_it_changes_nothing_else(setup):
    model, batch, _ = setup
    for masker in (Bernoulli(), Mirror()):
        plain = Estimator(rate_sampler=Uniform(eps=EPS), masker=masker, mask_token_id=V)
        with_proxy = Estimator(rate_sampler=Uniform(eps=EPS), masker=masker, mask_token_id=V,
                               grad_proxy="logits")
        a = plain(model, batch, torch.Generator().manual_seed(3))
        b = with_proxy(model, batch, torch.Generator().manual_seed(3))
        assert a.grad_proxy is None and b.grad_proxy.shape == (A,)
        assert torch.equal(a.loss, b.loss) and torch.equal(a.values, b.values)
        # The proxy is the norm of ∂l/∂logits (autograd on the detached logits of each view).
        t, _, views = plain.draw(batch, torch.Generator().manual_seed(3))
        counts = torch.full((A,), float(L))
        logits = [model(v.xt, batch.attention_mask).detach().requires_grad_() for v in views]
        raw, _ = Estimator._losses(logits, batch.x0, views, counts)
        grads = torch.autograd.grad(raw.sum(), logits)
        expected = sum(g.pow(2).sum((1, 2)) for g in grads).sqrt()
        torch.testing.assert_close(b.grad_proxy, expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(logit_gradient_norms(logits, batch.x0, views, counts),
                                   expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="grad_proxy"):
        Estimator(rate_sampler=Uniform(), masker=Bernoulli(), mask_token_id=V, grad_proxy="hidden")


def test_the_gradient_sampler_is_unbiased():
    """Weighted means of test functions under a t^-1/2 (gradient-optimal here) density equal
    their U[eps, 1] means within 4 SE."""
    sampler = Importance(lambda t: t.rsqrt(), eps=EPS)
    t, w = sampler.sample(200_000, torch.Generator().manual_seed(0))
    t, w = t.double().numpy(), w.double().numpy()
    for f, exact in ((lambda x: np.ones_like(x), 1.0), (lambda x: x, (1 + EPS) / 2),
                     (lambda x: x**2, (1 - EPS**3) / (3 * (1 - EPS))),
                     (lambda x: np.sqrt(x), 2 * (1 - EPS**1.5) / (3 * (1 - EPS)))):
        values = w * f(t)
        assert abs(values.mean() - exact) < 4 * values.std() / np.sqrt(values.size)


def test_the_tracker_recovers_the_known_gradient_second_moment(setup):
    """The online tracker fed the estimator's proxy, under a non-uniform sampler, estimates the
    uniform bin average of E[G² | t] = C/(N² t) within 4 SE in every bin."""
    model, batch, closed = setup
    estimator = Estimator(rate_sampler=Importance(lambda t: 1.0 + 3.0 * t, eps=EPS),
                          masker=Bernoulli(), mask_token_id=V, grad_proxy="logits")
    tracker = SecondMomentTracker(n_bins=8, eps=EPS)
    big = Batch(x0=batch.x0.repeat(100, 1), eligible=batch.eligible.repeat(100, 1),
                attention_mask=batch.attention_mask.repeat(100, 1),
                example_index=torch.arange(100 * A))
    seen_t, seen_w, seen_g = [], [], []
    for step in range(8):
        out = estimator(model, big, torch.Generator().manual_seed(step))
        tracker.update(out.t, out.grad_proxy, out.w)
        seen_t.append(out.t.double()), seen_w.append(out.w.double()), seen_g.append(out.grad_proxy.double())
    t, w, g2 = torch.cat(seen_t).numpy(), torch.cat(seen_w).numpy(), torch.cat(seen_g).numpy() ** 2
    edges = tracker.edges.numpy()
    tracked = tracker.moments()["second_moment"]
    for j in range(8):
        lo, hi = edges[j], edges[j + 1]
        inside = (t >= lo) & (t < hi) if j < 7 else (t >= lo)
        ww, yy = w[inside], g2[inside]
        mean = (ww * yy).sum() / ww.sum()
        se = np.sqrt((ww**2 * (yy - mean) ** 2).sum()) / ww.sum()
        exact = closed["c_bar"] / L**2 * np.log(hi / lo) / (hi - lo)
        assert tracked[j] == pytest.approx(mean, rel=1e-9)
        assert abs(tracked[j] - exact) < 4 * se, (j, tracked[j], exact, se)


def test_the_exact_gradient_design_gives_the_density_with_the_least_gradient_variance(setup):
    """On the closed-form model: the design's second moments match E[‖∇θ l‖² | t] and E[l² | t];
    the densities built from them (gradient- and loss-targeted, mixed λ = 0.05) give the
    closed-form tr Cov within 4 SE, and gradient ≤ P-POTS ≤ uniform, also measured (paired)."""
    model, batch, closed = setup
    model.bias.requires_grad_(False)  # the closed form is the θ part
    try:
        targets = measure_gradient_targets(model, batch, mask_token_id=V, n_rates=12,
                                           n_masks=8, eps=EPS)
        for key in ("gradient", "loss"):
            z = (targets.second_moment[key] - closed[key](targets.t)) / targets.se[key]
            assert np.all(np.abs(z) < 4.5), (key, z)
        samplers = {"uniform": Uniform(eps=EPS)}
        for key in ("loss", "gradient"):
            samplers[key] = Importance((targets.t, np.sqrt(targets.second_moment[key])), eps=EPS)
        measured = {k: estimator_gradient_variance(
            model, batch, Estimator(rate_sampler=s, masker=Bernoulli(), mask_token_id=V),
            n_draws=800, seed=0) for k, s in samplers.items()}
    finally:
        model.bias.requires_grad_(True)
    exact = {k: closed_trace_cov(s, closed) for k, s in samplers.items()}
    assert exact["gradient"] < exact["loss"] < exact["uniform"]
    assert exact["gradient"] < 0.8 * exact["uniform"]
    for key, result in measured.items():
        assert abs(result.trace_cov.value - exact[key]) < 4 * result.trace_cov.se, key
    for worse in ("uniform", "loss"):
        diff = paired_difference(measured["gradient"], measured[worse])
        assert diff.value + 2 * diff.se < 0, (worse, diff)


def test_the_gpots_methods_and_their_density_files(tmp_path):
    assert get_method("gpots").density_target == "gradient"
    assert get_method("gpots_mirror").forward_passes == 2
    online = method_config("gpots_online")
    assert online.refit.statistic == "logits"
    assert online.build(mask_token_id=V).grad_proxy == "logits"
    assert method_config("ppots_online").build(mask_token_id=V).grad_proxy is None
    with pytest.raises(ValueError, match="fit-pots --target gradient"):
        method_config("gpots")
    t = np.linspace(0.05, 0.95, 10)
    for target in ("loss", "gradient"):
        save_ppots_json(tmp_path / f"{target}.json", fit_ppots(t, 1 / np.sqrt(t), restarts=1,
                                                               target=target))
    assert len(density_for_method(tmp_path / "gradient.json", get_method("gpots"))["t"]) > 8
    with pytest.raises(ValueError, match="fitted to target 'loss'"):
        density_for_method(tmp_path / "loss.json", get_method("gpots"))
    with pytest.raises(ValueError, match="fitted to target 'gradient'"):
        density_for_method(tmp_path / "gradient.json", get_method("ppots"))


def test_gpots_online_refits_from_the_proxy_and_resumes_exactly(tmp_path):
    from dataclasses import replace

    from maskdiff.core.config import RefitConfig
    from maskdiff.training.trainer import Trainer
    from test_train import _metrics, _weights, tiny

    estimator = replace(method_config("gpots_online"),
                        refit=RefitConfig(refit_every=3, n_bins=8, min_count=1, restarts=2,
                                          statistic="logits"))
    config = tiny(tmp_path, estimator=estimator, checkpoint_every=2)
    straight = Trainer(replace(config, out_dir=str(tmp_path / "a")), quiet=True)
    assert straight.refitter.statistic == "logits" and straight.estimator.grad_proxy == "logits"
    straight.fit()
    refits = [r["ppots_refit"] for r in _metrics(tmp_path / "a") if "ppots_refit" in r]
    assert [r["step"] for r in refits] == [3, 6] and refits[-1]["refit"] >= 1
    # Every example of the 6 steps was tracked (count row of the tracker).
    assert straight.refitter.tracker._totals()[0].sum() == 6 * config.optim.batch_size
    interrupted = replace(config, out_dir=str(tmp_path / "b"))
    Trainer(interrupted, quiet=True).fit(stop_after=4)
    resumed = Trainer(interrupted, quiet=True)
    resumed.fit()
    for name, value in _weights(straight).items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_fit_pots_writes_the_target_it_was_given(tmp_path):
    import json

    from maskdiff.cli import main

    t = np.linspace(0.05, 0.95, 12)
    (tmp_path / "table.json").write_text(json.dumps({"t": t.tolist(), "p_hat": (1 / np.sqrt(t)).tolist()}))
    assert main(["fit-pots", "--from-table", str(tmp_path / "table.json"), "--target", "gradient",
                 "--restarts", "1", "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "ppots.json").read_text())["target"] == "gradient"
    density_for_method(tmp_path / "out" / "ppots.json", get_method("gpots_mirror"))


def test_the_hf_trainer_tracks_the_proxy_for_gpots_online(tmp_path):
    pytest.importorskip("transformers")
    from maskdiff.hf import MaskedDiffusionTrainer, method_trainer_kwargs
    from test_hf import MASK, PAD, args, sft_rows, tiny_bert

    kwargs = method_trainer_kwargs("gpots_online")
    assert kwargs["grad_proxy"] == "logits"
    kwargs.update(ppots_tracker=SecondMomentTracker(n_bins=8), refit_every=3,
                  refit_min_count=1.0, refit_restarts=1)
    trainer = MaskedDiffusionTrainer(
        model=tiny_bert(), args=args(tmp_path, per_device_train_batch_size=8, max_steps=6),
        train_dataset=sft_rows(16), mask_token_id=MASK, pad_token_id=PAD, seed=9, **kwargs)
    fed, original = [], trainer.refitter.after_step
    trainer.refitter.after_step = lambda step, t, values, w: (fed.append(values.clone()),
                                                              original(step, t, values, w))[1]
    pending = []
    collect = trainer.compute_loss

    def spy(model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = collect(model, inputs, return_outputs, num_items_in_batch)
        pending.append(trainer._pending[-1].grad_proxy.clone() if model.training else None)
        return loss

    trainer.compute_loss = spy
    trainer.train()
    assert trainer.refitter.statistic == "logits" and trainer.refits >= 1
    assert len(fed) == 6 and all(torch.equal(a, b) for a, b in zip(fed, pending))
