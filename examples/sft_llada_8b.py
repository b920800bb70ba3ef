"""Supervised fine-tuning of LLaDA-8B-Instruct with P-POTS + MIRROR (docs/huggingface.md).

    python examples/sft_llada_8b.py --data train.jsonl --output-dir llada-sft --lora \
        --max-length 1024 --batch-size 4 --grad-accum 8 --steps 1000 --online-refit-every 50

Data: a JSONL file of ``{"prompt": ..., "response": ...}`` or ``{"messages": [...]}`` rows. The
prompt stays visible; the assistant turns (with their closing tokens) are eligible; short rows
are padded with EOS tokens that are eligible too (LLaDA's SFT recipe), normalised by the
eligible count. Rates come from P-POTS (``--ppots`` a ``maskdiff fit-pots`` JSON, else estimated
from the model at start-up on the first ``--ppots-examples`` rows and saved to
``OUTPUT/ppots.json``), optionally refitted online; masks from MIRROR (two complementary views
per example, fused into one forward pass).

Several GPUs: launch it with one of the accelerate configurations of ``examples/accelerate/``
(DDP, FSDP2, DeepSpeed ZeRO-2/3; docs/huggingface.md "Scaling out"), e.g.

    accelerate launch --config_file examples/accelerate/fsdp2.yaml --num_processes 8 \
        examples/sft_llada_8b.py --data train.jsonl --output-dir llada-sft --full --ppots ppots.json

With several processes ``--ppots`` is required (one density for every rank) and the model is
loaded on the CPU, then placed or sharded by the launch's strategy. ``--pad-to-max-length``
makes the run identical across numbers of processes (EOS padding to the longest row of a
micro-batch changes the examples). A tokenizer without a chat template takes
``{"prompt", "response"}`` rows (prompt, then response + EOS); ``messages`` rows need one.

Needs a GPU (bf16 weights alone are 16 GB; see docs/huggingface.md for LoRA vs full fine-tuning
memory). Any local model directory works too: ``--model DIR --device cpu --no-bf16`` runs the
same code on a tiny model (tests/test_hf.py does so).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from maskdiff.commands import add_hf_load_arguments, hf_load_kwargs
from maskdiff.core.config import ComponentConfig, EstimatorConfig, RefitConfig
from maskdiff.core.methods import importance_params
from maskdiff.core.weighting import LOSS_CONVENTIONS
from maskdiff.hf import ChatCollator, MaskedDiffusionTrainer, load_hf_model
from maskdiff.hf.lora import apply_lora
from maskdiff.ppots import density_table, estimate_ppots, load_ppots_json, save_ppots_json

LLADA = "GSAI-ML/LLaDA-8B-Instruct"
LLADA_MASK_ID = 126336
# LLaDA's transformer blocks (model.transformer.blocks.N.*); the regex leaves the LM head
# (transformer.ff_out) out of the adapters.
LLADA_LORA_TARGETS = r".*\.blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)$"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=LLADA, help="HF model name or local directory")
    add_hf_load_arguments(p)  # --mask-token-id, --trust-remote-code, --logit-shift, ...
    p.set_defaults(trust_remote_code=True)  # LLaDA's own code; other models may need it too
    p.add_argument("--loss-convention", choices=sorted(LOSS_CONVENTIONS), default="llada-sft",
                   help="the loss's normaliser and token weights (docs/huggingface.md "
                        "\"Loss conventions\"); default: LLaDA's SFT loss")
    p.add_argument("--data", required=True, help="JSONL of prompt/response or messages rows")
    p.add_argument("--output-dir", required=True)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="lora", action="store_true", default=True,
                      help="train LoRA adapters only (default)")
    mode.add_argument("--full", dest="lora", action="store_false", help="train every weight")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-targets", nargs="+", default=None,
                   help=f"module names (default for LLaDA: the regex {LLADA_LORA_TARGETS!r})")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--pad-to-max-length", action="store_true",
                   help="pad every row to --max-length (else to the longest row of the micro-batch; "
                        "under EOS padding the padded length changes the example, so this is what "
                        "makes a run identical across numbers of GPUs)")
    p.add_argument("--batch-size", type=int, default=4, help="per device")
    p.add_argument("--grad-accum", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help="default 1e-4 (LoRA) / 2.5e-5 (full)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--save-steps", type=int, default=200)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--optim", default="adamw_torch", help="a TrainingArguments optim name")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", default=True)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--ppots", help="a P-POTS JSON from `maskdiff fit-pots` (else estimated here)")
    p.add_argument("--ppots-examples", type=int, default=15, help="a of docs/method.md §4")
    p.add_argument("--ppots-rates", type=int, default=70, help="b of docs/method.md §4")
    p.add_argument("--ppots-masks", type=int, default=15, help="c of docs/method.md §4")
    p.add_argument("--ppots-batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--ppots-restarts", type=int, default=16)
    p.add_argument("--online-refit-every", type=int, default=0, help="0: static P-POTS")
    p.add_argument("--block-size", type=int, default=None,
                   help="block diffusion (docs/method.md §12): blocks of N tokens, the model "
                        "reading [xt ; x0] under the block mask (a family that takes a 4-D "
                        "mask: LLaDA2; not LLaDA, not Dream)")
    p.add_argument("--block-rates", choices=["block", "sequence"], default="block",
                   help="one rate per block (BD3-LM) or per sequence (LLaDA2.0, dllm)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--report-to", nargs="+", default=["none"],
                   help="TrainingArguments.report_to, e.g. tensorboard (logs every maskdiff key)")
    args = p.parse_args(argv)
    if args.mask_token_id is None and args.model == LLADA:
        args.mask_token_id = LLADA_MASK_ID
    if args.lr is None:
        args.lr = 1e-4 if args.lora else 2.5e-5
    return args


def read_jsonl(path: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"--data {path} holds no rows")
    return rows


def enable_checkpointing(model) -> None:
    """HF gradient checkpointing, or LLaDA's own activation checkpointing (its remote code)."""
    try:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    except (ValueError, AttributeError, NotImplementedError):
        pass
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "set_activation_checkpointing"):
        raise ValueError(f"{type(model).__name__} supports no gradient checkpointing")
    inner.set_activation_checkpointing("whole_layer")


def build_estimator(args, adapter, collate, rows, device) -> EstimatorConfig:
    """P-POTS+MIRROR: the density loaded, or estimated from the model on the first a rows
    (docs/method.md §4); with --online-refit-every, refitted during training."""
    out = Path(args.output_dir)
    source = args.ppots or out / "ppots.json"
    if args.ppots:
        result = load_ppots_json(args.ppots)
    elif (out / "ppots.json").is_file():  # a resumed run reuses its own estimate
        result = load_ppots_json(out / "ppots.json")
    else:
        batch = collate.pad.batch([{**collate.encode(row), "example_index": i}
                                   for i, row in enumerate(rows[: args.ppots_examples])])
        result = estimate_ppots(adapter, batch, mask_token_id=adapter.mask_token_id,
                                n_rates=args.ppots_rates, n_masks=args.ppots_masks,
                                restarts=args.ppots_restarts, seed=args.seed,
                                batch_size=args.ppots_batch_size, device=device,
                                progress=sys.stderr.isatty())
        out.mkdir(parents=True, exist_ok=True)
        save_ppots_json(out / "ppots.json", result)
        print(f"P-POTS: {result.forward_passes} loss evaluations in {result.seconds:.0f} s, "
              f"EPR KL {result.epr.kl:.4f}", flush=True)
    # The fitted table with the file's mix and eps (said once on stderr where it reaches
    # beyond the rates p̂ was estimated on), as `maskdiff train --ppots` uses it.
    density = density_table(result, source=source)
    refit = (RefitConfig(refit_every=args.online_refit_every, n_bins=20)
             if args.online_refit_every > 0 else None)
    return EstimatorConfig(
        sampler=ComponentConfig(name="importance", params=importance_params(density)),
        masker=ComponentConfig(name="mirror"), refit=refit)


def training_arguments(args):
    import transformers

    return transformers.TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        weight_decay=args.weight_decay, max_steps=args.steps, warmup_steps=args.warmup_steps,
        lr_scheduler_type="cosine", logging_steps=args.logging_steps, save_steps=args.save_steps,
        save_total_limit=2, bf16=args.bf16, optim=args.optim, seed=args.seed,
        report_to=args.report_to, use_cpu=args.device == "cpu", dataloader_num_workers=0,
        max_grad_norm=1.0)


def main(argv: list[str] | None = None) -> int:
    import transformers

    args = parse_args(argv)
    rows = read_jsonl(args.data)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not args.ppots and not (Path(args.output_dir) / "ppots.json").is_file():
        raise SystemExit("several processes: pass --ppots (a `maskdiff fit-pots` JSON, or the "
                         "ppots.json of a one-process run) so every rank samples one density")
    # Built before the model: under a DeepSpeed ZeRO-3 launch this lets from_pretrained
    # partition the weights as it loads them (zero.Init).
    training = training_arguments(args)
    # Several processes: load on the CPU and let Trainer / accelerate place (or shard) the model.
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    adapter, tokenizer, mask_id = load_hf_model(
        args.model, device="cpu" if world > 1 else args.device, dtype=dtype, pad_policy="eos",
        **hf_load_kwargs(args))
    collate = ChatCollator(tokenizer, pad_policy="eos", max_length=args.max_length,
                           pad_to_multiple_of=args.max_length if args.pad_to_max_length else None)
    estimator = build_estimator(args, adapter, collate, rows, args.device)

    model = adapter.model
    if args.lora:
        model = apply_lora(model, args.lora_targets or LLADA_LORA_TARGETS, r=args.lora_r,
                           alpha=args.lora_alpha)
    if args.gradient_checkpointing:
        enable_checkpointing(model.get_base_model() if args.lora else model)
        if args.lora and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # frozen embeddings: let checkpointed blocks see grads
    trainer = MaskedDiffusionTrainer(
        model=model, args=training, train_dataset=rows, data_collator=collate,
        processing_class=tokenizer, estimator=estimator.with_convention(args.loss_convention),
        mask_token_id=mask_id, seed=args.seed, pad_policy="eos",
        logit_shift=adapter.options.logit_shift, attention=adapter.options.attention,
        block_size=args.block_size, block_rates=args.block_rates)
    trainable, total = trainer.parameter_counts
    if trainer.is_world_process_zero():
        print(f"training {trainable:,} of {total:,} parameters ({100 * trainable / total:.3f}%)",
              flush=True)
    # True: the newest complete checkpoint (one a kill left half-written is skipped, with a line)
    resume = (args.resume and Path(args.output_dir).is_dir()
              and transformers.trainer_utils.get_last_checkpoint(args.output_dir) is not None)
    trainer.train(resume_from_checkpoint=True if resume else None)
    final = Path(args.output_dir) / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():  # one writer under accelerate / torchrun
        (final / "refits.json").write_text(json.dumps(trainer.refit_history, indent=1) + "\n")
        print(f"saved {'LoRA adapters' if args.lora else 'the model'} to {final}", flush=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
