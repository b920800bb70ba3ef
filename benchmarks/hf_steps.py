"""A few Hugging Face-path training steps of a LLaDA-architecture model with random weights:
peak memory and tokens/s per method, through load_hf_model and MaskedDiffusionTrainer.

The model is built from LLaDA's own modeling code (the fixture folder ``../shared/fixtures``, or
``--fixtures``) with :func:`maskdiff.hf.remote.save_random_model`: ~1.06B parameters by default
(d_model 2048, 18 layers, 16 heads, MLP 5632, vocabulary 32000), bf16 autocast on CUDA.
``--dry-run`` uses a tiny model (hidden 64, 2 layers) and runs on CPU in seconds.

    python benchmarks/hf_steps.py [--dry-run] [--device cuda] [--steps 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from maskdiff import jsonio

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"full": dict(hidden=2048, layers=18, heads=16, mlp=5632, vocab=32000, seq=512, batch=8),
         "dry": dict(hidden=64, layers=2, heads=4, mlp=128, vocab=320, seq=64, batch=4)}


def build(code_dir: Path, out: Path, size: dict, dtype: torch.dtype) -> Path:
    from maskdiff.hf.remote import save_random_model, sized_config, small_tokenizer

    config = sized_config("llada", vocab_size=size["vocab"], hidden=size["hidden"],
                          layers=size["layers"], heads=size["heads"], max_len=size["seq"])
    config.update(mlp_hidden_size=size["mlp"])
    return save_random_model(code_dir, out, config=config, dtype=dtype,
                             tokenizer=small_tokenizer(320))


def run_method(adapter, method: str, size: dict, steps: int, device: str, out: Path) -> dict:
    import transformers

    from maskdiff.hf import MaskedDiffusionTrainer, method_estimator

    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(4, size["vocab"], (size["seq"],), generator=g).tolist()}
            for _ in range(size["batch"] * (steps + 1))]
    times: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    args = transformers.TrainingArguments(
        output_dir=str(out / method), report_to=[], use_cpu=device == "cpu",
        bf16=device == "cuda", per_device_train_batch_size=size["batch"], max_steps=steps + 1,
        logging_steps=steps + 1, save_strategy="no", learning_rate=1e-5, disable_tqdm=True,
        dataloader_num_workers=0)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = MaskedDiffusionTrainer(model=adapter, args=args, train_dataset=rows,
                                     callbacks=[Clock()], estimator=method_estimator(method))
    trainer.train()
    seconds = (times[-1] - times[0]) / steps  # the first step (warm-up) is not timed
    loss = trainer.state.log_history[-1].get("train_loss", float("nan"))
    memory = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    del trainer
    return {"name": f"HF LLaDA {method}", "method": method, "s_per_step": seconds,
            "ms_per_step": 1000 * seconds,
            "tokens_per_s": size["batch"] * size["seq"] / seconds,
            "peak_memory_gib": memory, "train_loss": loss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on CPU")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--methods", default="standard,mirror")
    parser.add_argument("--fixtures", default=str(ROOT.parent / "shared" / "fixtures"))
    parser.add_argument("--json", "--out", dest="json", default="runs/benchmarks/hf_steps.json",
                        help="where the JSON goes (gpu_check.py passes --out)")
    args = parser.parse_args(argv)
    code_dir = Path(args.fixtures) / "models" / "llada"
    if not code_dir.is_dir():  # a user's clone: no fixture folder beside it
        note = f"no LLaDA model code at {code_dir} (pass --fixtures)"
        print(f"hf_steps: skipped: {note}", file=sys.stderr)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(jsonio.dumps(
            {"rows": [{"name": "HF LLaDA", "status": "skipped", "note": note}]}) + "\n")
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    size = SIZES["dry" if args.dry_run else "full"]
    from maskdiff.hf import load_hf_model

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        start = time.perf_counter()
        path = build(code_dir, Path(tmp) / "llada", size,
                     torch.float32 if args.dry_run else torch.bfloat16)
        adapter, _, _ = load_hf_model(path, trust_remote_code=True, device=device,
                                      dtype=torch.float32)
        setup = time.perf_counter() - start
        params = sum(p.numel() for p in adapter.model.parameters())
        rows = [run_method(adapter, m, size, args.steps, device, Path(tmp))
                for m in args.methods.split(",")]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"LLaDA-architecture, {params / 1e6:,.1f}M parameters, batch {size['batch']} x "
          f"{size['seq']} tokens, device {name}, build+load {setup:.0f} s")
    print(f"{'method':<10} {'s/step':>8} {'tokens/s':>10} {'peak GiB':>9} {'loss':>7}")
    for r in rows:
        print(f"{r['method']:<10} {r['s_per_step']:>8.3f} {r['tokens_per_s']:>10.0f} "
              f"{r['peak_memory_gib']:>9.2f} {r['train_loss']:>7.3f}")
    bad = [r["method"] for r in rows if not math.isfinite(r["train_loss"])]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(jsonio.dumps({"device": name, "parameters": params, "size": size,
                                             "steps": args.steps, "rows": rows}, indent=2) + "\n")
    print(f"written: {args.json}")
    if bad:
        print(f"hf_steps: non-finite training loss for {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
