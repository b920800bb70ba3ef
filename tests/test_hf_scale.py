"""The multi-process recipes of docs/huggingface.md "Scaling out" (examples/accelerate/).

What runs on this CPU machine: ``accelerate launch`` of the DDP configuration with 2 processes
(gloo) against 1 process, through examples/sft_llada_8b.py; torch's FSDP2 (``fully_shard``) with
2 gloo ranks against 1 process, with maskdiff's estimator and seeding (accelerate itself routes
FSDP only to GPUs: on a CPU it runs DDP). What only loads here: the FSDP2 and DeepSpeed ZeRO-2/3
configurations, through accelerate's own launcher code and plugins and transformers' "auto"
filling (DeepSpeed needs CUDA).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from test_hf import CONVERSATION, remote_code_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "examples" / "accelerate"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _example_args(model: Path, data: Path, out: Path, batch: int) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--output-dir", str(out), "--full",
            "--batch-size", str(batch), "--grad-accum", "1", "--steps", "4", "--warmup-steps", "0",
            "--save-steps", "4", "--logging-steps", "1", "--device", "cpu", "--no-bf16",
            "--max-length", "24", "--pad-to-max-length"]


def _log(out: Path) -> list[dict]:
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    return [r for r in state["log_history"] if "masked_ce" in r]


@pytest.mark.slow  # ~40 s: out of the default run (10-minute budget), `pytest -m slow`
def test_accelerate_ddp_two_processes_match_one(tmp_path):
    """`accelerate launch --config_file examples/accelerate/ddp.yaml --num_processes 2` (gloo on
    this CPU) of the LLaDA example: the same rates (the same t-bins filled), losses to 1e-5 and
    weights to 1e-5 as one process with twice the per-device batch."""
    from safetensors.torch import load_file
    import runpy

    model = remote_code_dir(tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "what is two plus three", "response": "the answer : five"},
        {"messages": CONVERSATION}, {"prompt": "hello world", "response": "a b c"},
        {"prompt": "two plus two", "response": "the answer = a"}] * 2))
    script = ROOT / "examples" / "sft_llada_8b.py"
    one = tmp_path / "one"
    assert runpy.run_path(str(script))["main"]([
        *_example_args(model, data, one, 4), "--ppots-examples", "4", "--ppots-rates", "8",
        "--ppots-masks", "2", "--ppots-restarts", "1"]) == 0
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(RECIPES / "ddp.yaml"), "--num_processes", "2", "--main_process_port", str(_free_port()),
         str(script), *_example_args(model, data, two, 2), "--ppots", str(one / "ppots.json")],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _log(one), _log(two)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        bins = sorted(k for k in x if k.startswith("loss_per_t_bin_"))
        assert bins == sorted(k for k in y if k.startswith("loss_per_t_bin_"))  # the same rates
        for key in ["loss", "masked_ce", "grad_norm", "variance_proxy", *bins]:
            assert y[key] == pytest.approx(x[key], abs=1e-5, rel=1e-5), key
    wa = load_file(str(one / "final" / "model.safetensors"))
    wb = load_file(str(two / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_fsdp2_fully_shard_on_gloo_matches_one_process(tmp_path):
    """torch FSDP2 (``fully_shard`` of every BERT layer and the root, 2 gloo ranks on the CPU):
    maskdiff's estimator with (seed, step, example index) draws gives the weights one process
    gives, to 1e-5, and the same per-step losses."""
    out = tmp_path / "fsdp2"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "fsdp2_worker.py"), str(out)],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.path.insert(0, str(ROOT / "tests"))
    from fsdp2_worker import train

    single, losses = train(rank=0, world=1, mesh=None)
    sharded = torch.load(out / "weights.pt")
    assert json.loads((out / "losses.json").read_text()) == pytest.approx(losses, abs=1e-6)
    for name, value in single.items():
        torch.testing.assert_close(sharded[name], value, atol=1e-5, rtol=0)


def _launch_env(name: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file examples/accelerate/NAME.yaml
    --num_processes 2` gives each process (accelerate's own launcher code)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(RECIPES / f"{name}.yaml"), "--num_processes", "2", "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if not args.use_deepspeed:
        return prepare_multi_gpu_env(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    return prepare_deepspeed_cmd_env(args)[1]


def test_fsdp2_recipe_loads_as_fsdp2():
    from accelerate.utils import FullyShardedDataParallelPlugin

    env = _launch_env("fsdp2")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == ["LLaDALlamaBlock"]
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.cpu_ram_efficient_loading is True


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_recipes_load_and_fill_every_auto(stage, tmp_path, monkeypatch):
    """The ZeRO-2/3 configurations: accelerate's DeepSpeedPlugin reads them (stage, zero.Init),
    and transformers' Trainer logic fills every "auto" from TrainingArguments without a
    mismatch (DeepSpeed itself is not installed here: it needs CUDA)."""
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from test_hf import tiny_bert

    env = _launch_env(f"deepspeed_zero{stage}")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == str(stage == 3).lower()
    monkeypatch.chdir(ROOT)  # the yaml names the JSON relative to the repository root
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage and plugin.hf_ds_config.is_zero3() == (stage == 3)
    # Trainer's own filling (HfTrainerDeepSpeedConfig), on accelerate's config object: the
    # transformers class's __init__ insists on an installed deepspeed, its methods do not.
    filled_class = type("Filled", (HfTrainerDeepSpeedConfig, HfDeepSpeedConfig), {})
    filled = filled_class.__new__(filled_class)
    HfDeepSpeedConfig.__init__(filled, str(RECIPES / f"ds_zero{stage}.json"))
    filled._dtype, filled.mismatches = None, []
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=8,
        bf16=True, use_cpu=True, report_to=[], max_grad_norm=1.0)
    filled.trainer_config_process(args)
    filled.trainer_config_finalize(args, tiny_bert(), num_training_steps=10)
    text = json.dumps(filled.config)
    assert '"auto"' not in text, text
    assert filled.config["train_micro_batch_size_per_gpu"] == 4
    assert filled.config["gradient_accumulation_steps"] == 8
    assert filled.config["bf16"]["enabled"] is True and filled.config["gradient_clipping"] == 1.0
