"""``maskdiff compare --block-size N`` / ``--sweep-block``: block diffusion in the paired
protocol (docs/method.md §12): keys, the plain starting checkpoint, the per-(example, block)
P-POTS losses, the 2L token count, and the jobs end to end on the smoke preset."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maskdiff.cli import main
from maskdiff.core.blocks import BlockLayout
from maskdiff.core.masking import Bernoulli
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import Uniform
from maskdiff.diagnostics.nested import nested_losses
from maskdiff.diagnostics.probe import estimator_loss_fn, estimator_unit_loss_fn
from maskdiff.experiments.compare import PRESETS, CompareJob, RunSpec
from maskdiff.experiments.compare_blocks import block_job, block_preset
from maskdiff.experiments.compare_eval import block_decoding, scoring_key
from maskdiff.experiments.compare_presets import BLOCK_METHODS, SEEDS
from maskdiff.training.runs import example_batch, run_key

SMOKE = PRESETS["smoke"]


def test_a_block_run_has_its_own_key_and_folder_and_the_plain_starting_checkpoint(tmp_path):
    plain = CompareJob(SMOKE, tmp_path, progress=False)
    block = block_job(SMOKE, tmp_path, 8, progress=False)
    spec = RunSpec("standard", 42, "arithmetic")
    p_cfg, b_cfg = plain.run_config(spec), block.run_config(spec)
    assert (p_cfg.block_size, b_cfg.block_size) == (None, 8)
    assert p_cfg.out_dir == str(tmp_path / "runs/arithmetic/standard/s42")
    assert b_cfg.out_dir == str(tmp_path / "b8/runs/arithmetic/standard/s42")
    p_key = run_key(p_cfg, score=scoring_key(SMOKE, True, False))
    b_key = run_key(b_cfg, score=scoring_key(block.preset, True, True))
    assert p_key != b_key and b_key["config"]["block_size"] == 8
    assert "block_decoding" in b_key["score"] and "block_decoding" not in p_key["score"]
    # The same starting checkpoint (config and folder) as the plain job.
    assert block.start_config("arithmetic", False) == plain.start_config("arithmetic", False)
    # Another block size: another key and folder; the causal twin stays the plain job's run.
    b4 = block_job(SMOKE, tmp_path, 4, progress=False).run_config(spec)
    assert b4.block_size == 4 and "/b4/" in b4.out_dir
    ar = block.run_config(RunSpec("ar", 42, "arithmetic"))
    assert ar.block_size is None and ar == plain.run_config(RunSpec("ar", 42, "arithmetic"))


def test_the_block_preset_has_ten_paired_seeds_and_the_methods_of_the_issue():
    preset = PRESETS["block"]
    assert preset.base.block_size == 8 and preset.seeds == SEEDS[:10]
    assert set(BLOCK_METHODS) == {"standard", "mirror", "ppots", "ppots_mirror", "clipped",
                                  "standard@2x"} == set(preset.methods)
    full = PRESETS["full"]
    assert (preset.base.optim.max_steps, preset.base.optim.batch_size) == (150, 32)
    # the plain job of the block preset starts from `full`'s checkpoint (same start config)
    start = lambda p: CompareJob(p, Path("/x"), progress=False).start_config("arithmetic", False)  # noqa: E731
    assert start(preset) == start(full)
    assert block_preset(preset, None).base.block_size is None


def _tiny_model(vocab, length):
    from maskdiff.models import TransformerConfig, build_model

    torch.manual_seed(0)
    return build_model(TransformerConfig(vocab_size=vocab, max_len=length, mask_token_id=vocab - 1,
                                         d_model=16, n_layers=1, n_heads=2)).eval()


def test_block_ppots_losses_are_per_example_block_units_whose_mean_is_the_example_loss():
    from maskdiff.data.setup import load_task

    task = load_task(SMOKE.base.data)
    batch = example_batch(SMOKE.base, task, 3)
    length = batch.x0.shape[1]
    model = _tiny_model(task.tokenizer.vocab_size, length)
    layout = BlockLayout(16)
    est = Estimator(rate_sampler=Uniform(), masker=Bernoulli(),
                    mask_token_id=task.tokenizer.mask_id, layout=layout)
    units = layout.units(length)
    ids, t, seeds = torch.tensor([0, 1, 2]), torch.tensor([0.3, 0.6, 0.9]), torch.tensor([5, 6, 7])
    with torch.no_grad():
        per_unit = estimator_unit_loss_fn(model, batch, est)(ids, t, seeds)
        per_example = estimator_loss_fn(model, batch, est)(ids, t, seeds)
    assert per_unit.shape == (3, units) == (3, 7)
    # the trainer's unit value is units · l_k: their mean is the example's loss
    assert torch.allclose(per_unit.mean(dim=1), per_example, rtol=1e-5, atol=1e-6)
    eligible = est.eligible(batch)
    empty = layout.unit_sums(eligible.float()) == 0  # prompt-only blocks: no loss
    assert empty.any() and (per_unit[empty] == 0).all() and (per_unit[~empty] > 0).all()
    fn = estimator_unit_loss_fn(model, batch, est)
    grid = torch.tensor([0.25, 0.5, 0.75])
    with torch.no_grad():
        nested = nested_losses(fn, n_examples=3, rates=grid, n_masks=2, units=units,
                               progress=False, seed=1)
        flat = nested_losses(lambda i, t, s: fn(i, t, s)[:, 2], n_examples=3, rates=grid,
                             n_masks=2, progress=False, seed=1)
    assert nested.shape == (3 * units, 3, 2)
    np.testing.assert_allclose(nested[2::units], flat)  # row i · units + u is (example i, block u)


@pytest.fixture(scope="module")
def block_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("block")
    common = ["--preset", "smoke", "--seeds", "42,731", "--out", str(out), "--workers", "1",
              "--threads", "1", "--quiet"]
    assert main(["compare", "--block-size", "8", "--methods", "standard,ppots", *common]) == 0
    assert main(["compare", "--sweep-block", "8", *common]) == 0
    return out


def test_a_block_job_runs_end_to_end_and_records_the_block_size(block_out):
    results = json.loads((block_out / "b8" / "results.json").read_text())
    assert results["block"] == {"block_size": 8, "rates": "block"}
    assert results["config"]["block_size"] == 8 and set(results["methods"]) == {"standard", "ppots"}
    for run in results["runs"]:
        assert run["block_size"] == 8 and run["test_loss_kind"] == "ELBO"
        # 2L input positions per example: tokens = forward passes × 2 × max_len
        assert run["tokens"] == run["forward_passes"] * 2 * 112
        assert run["tokens_per_step"] == 8 * 2 * 112
        # pass@1 only with a block decoder (pass_at_1(..., layout=)), never layout-less
        assert (run["pass_at_1"] is not None) == block_decoding()
        assert run["decoding_layout"] == ({"block_size": 8, "rates": "block"}
                                          if block_decoding() else None)
    report = (block_out / "b8" / "report.md").read_text()
    assert "Block diffusion, block size 8" in report and "block ELBO" in report
    assert ("decoded under the block layout" if block_decoding() else "pass@1 not scored") in report
    assert "ppots-b8/ppots.png" in report
    ppots = json.loads((block_out / "ppots-b8" / "ppots.json").read_text())
    assert ppots["job_key"]["block"] == {"block_size": 8, "rates": "block"}
    assert ppots["forward_passes"] == 4 * 10 * 2  # a × b × c: one pass per row, all blocks
    assert not (block_out / "ppots").exists()  # the plain density is another file
    assert (block_out / "start" / "arithmetic-diffusion").is_dir()


def test_the_block_sweep_reuses_the_block_runs_and_reports_the_references(block_out, capsys):
    doc = json.loads((block_out / "block-sweep.json").read_text())
    labels = [r["label"] for r in doc["rows"]]
    assert labels == ["b=8", "b=L (plain standard)", "causal twin (ar)"]
    b8, plain, ar = doc["rows"]
    kinds = (b8["test_loss_kind"], plain["test_loss_kind"], ar["test_loss_kind"])
    assert kinds == ("block ELBO (b=8)", "ELBO", "causal NLL")
    assert b8["token_ratio"] == pytest.approx(2.0) and ar["token_ratio"] == pytest.approx(1.0)
    assert plain["vs_plain"] is None and plain["pass_at_1_ci"] is not None
    assert (b8["vs_plain"] is not None) == block_decoding()
    block = json.loads((block_out / "b8" / "results.json").read_text())
    assert b8["pass_at_1"] == block["methods"]["standard"]["pass_at_1"]  # the same runs
    assert "block size" in (block_out / "block-sweep.md").read_text()
    assert (block_out / "block-sweep.png").stat().st_size > 10_000  # the figure was drawn


def test_block_options_are_refused_with_hf_or_the_batch_sweep(tmp_path, capsys):
    code = main(["compare", "--preset", "smoke", "--block-size", "8", "--sweep-batch", "4",
                 "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--block-size" in err[0]


def test_the_readme_generators_render_the_block_results(block_out, tmp_path):
    from maskdiff.experiments.readme_tables import add, update

    results = tmp_path / "results"
    add(results, "compare-block-sweep", block_out / "block-sweep.json")
    add(results, "compare-block", block_out / "b8" / "results.json")
    text = "".join(f"<!-- results:{name}:{table} -->\n<!-- /results -->\n" for name, table in (
        ("compare-block-sweep", "block-sweep-setup"), ("compare-block-sweep", "block-sweep"),
        ("compare-block", "block-setup"), ("compare-block", "summary")))
    new, changed = update(text, results)
    assert len(changed) == 4
    assert "| b=8 | " in new and "| causal twin (ar) | 0.0 [0.0, 0.0] |" in new
    assert "different quantities" in new and "Block diffusion, block size 8" in new
    assert "| ppots | 1 |" in new  # the block job's summary table: same forward passes
    assert update(new, results)[1] == []
