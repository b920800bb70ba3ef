"""Loading what a training run left behind: config, tokeniser, model weights."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from maskdiff import jsonio
from maskdiff.jobs import differences, plain, refusal, reuse_or_run, set_aside
from maskdiff.training.checkpoint import CheckpointError, Found, find_checkpoint, load_checkpoint
from maskdiff.training.config import TrainConfig, config_differences, from_dict, to_dict
from maskdiff.training.needs import resolve_estimator
from maskdiff.core.batch import Batch
from maskdiff.data import Collator, CollatorConfig, TaskData, load_tokenizer, single_token_ids
from maskdiff.data.examples import Example
from maskdiff.models import TransformerConfig, build_model

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class LoadedRun:
    config: TrainConfig
    model: torch.nn.Module
    tokenizer: object
    checkpoint: Path


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu") -> LoadedRun:
    """The model of a run directory: its ``best`` (early-stopping) or ``latest`` checkpoint."""
    run_dir = Path(run_dir)
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    if not (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} is not a run directory (no config.json)")
    tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
    fits = weights_fit_config(tokenizer)  # a checkpoint whose config.json disagrees is damaged
    found = find_checkpoint(run_dir / ("best" if which == "best" else "checkpoints"), fits)
    if found.checkpoint is None and which == "best":
        best = found
        found = find_checkpoint(run_dir / "checkpoints", fits)
        found = Found(found.checkpoint, best.skipped + found.skipped)
    if found.checkpoint is None:
        if found.skipped:
            raise CheckpointError(f"{run_dir} has no valid checkpoint ({found.note()})")
        raise ValueError(f"{run_dir} has no checkpoint yet")
    if found.skipped:
        print(f"maskdiff: {found.note()}", file=sys.stderr, flush=True)
    ckpt, path = found.checkpoint, found.checkpoint.path
    config = from_dict(TrainConfig, ckpt.config)
    model = build_model(_model_config(config, tokenizer))
    model.load_state_dict(ckpt.weights)
    return LoadedRun(config=config, model=model.to(device).eval(), tokenizer=tokenizer,
                     checkpoint=path)


def _model_config(config: TrainConfig, tokenizer) -> TransformerConfig:
    return TransformerConfig(vocab_size=tokenizer.vocab_size, max_len=config.data.max_len,
                             mask_token_id=tokenizer.mask_id, **to_dict(config.model))


def checked_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor],
                    where: str) -> dict[str, torch.Tensor]:
    """``weights`` when they fit ``model`` (the same names and shapes), else a
    :class:`CheckpointError` naming ``where`` and the first mismatches, never a long
    ``load_state_dict`` traceback."""
    expected = model.state_dict()
    problems = [f"{k}: {tuple(weights[k].shape)} where the model has {tuple(v.shape)}"
                for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    problems += [f"missing {missing[:3]}"] * bool(missing) + [f"unexpected {extra[:3]}"] * bool(extra)
    if problems:
        raise CheckpointError(f"{where} does not fit the model of its config ("
                              f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''})")
    return weights


def weights_fit_config(tokenizer):
    """A :func:`find_checkpoint` validator: a checkpoint whose weights do not fit the model its
    own ``config.json`` describes (a hand-edited or mixed-up file) is damaged, and skipped."""
    def validate(ckpt) -> None:
        try:
            config = from_dict(TrainConfig, ckpt.config)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{ckpt.path / 'config.json'} is not a run config ({err})") from None
        with torch.device("meta"):  # shapes only: nothing allocated
            model = build_model(_model_config(config, tokenizer))
        checked_weights(model, ckpt.weights, f"{ckpt.path / 'model.safetensors'}")
    return validate


def start_notes(task: TaskData, truncated: dict, config: TrainConfig, step: int,
                extension: dict | None) -> list[str]:
    """What a run says once at its start (each a line): examples cut to ``max_len``, repeated
    rows of a train_file, a validation split too small for a standard error, an extension."""
    from maskdiff.training.extend import extension_line

    lines = [truncation_line(truncated, config.data.max_len), task.params.get("notes")]
    n_val = truncated.get("val", {}).get("of", 2)
    if n_val < 2:
        lines.append(f"warning: the validation split has {n_val} example: early stopping "
                     f"compares single-example losses and the standard error is undefined "
                     f"(n/a; null in results.json); give a larger val_file or more rows")
    if extension is not None:
        lines.append(extension_line(Path(config.out_dir), step, extension["from_max_steps"],
                                    config))
    return [line for line in lines if line]


def make_collator(config: TrainConfig, task: TaskData) -> Collator:
    """The collator a run with ``config`` trains with (pad policy, overflow, SyRM syntax ids)."""
    tok = task.tokenizer
    syntax = single_token_ids(tok, task.syntax_tokens) if task.syntax_tokens else None
    return Collator(tok, CollatorConfig(max_len=config.data.max_len, pad_policy=config.data.pad_policy,
                                        overflow=config.data.overflow), syntax_ids=syntax)


def check_step_memory(config: TrainConfig, vocab_size: int, micro_batch: int,
                      forward_passes: int) -> None:
    """Refuse a batch or length whose activations exceed the machine's memory (a ValueError
    with the estimate), before anything is allocated (:mod:`maskdiff.memory`)."""
    from maskdiff.memory import require, transformer_step_bytes

    model, data = config.model, config.data
    rows = max(micro_batch * forward_passes, config.eval.batch_size)
    # Block diffusion (docs/method.md §12) runs the model on [x_t ; x_0]: 2L positions.
    length = data.max_len * (1 if config.block_size is None else 2)
    need = transformer_step_bytes(rows=rows, length=length, d_model=model.d_model,
                                  n_layers=model.n_layers, n_heads=model.n_heads, vocab=vocab_size)
    require(need, f"a step of {rows} rows × {length} positions (max_len={data.max_len}"
                  f"{'' if config.block_size is None else ', block diffusion: x_t and x_0'}; "
                  f"d_model={model.d_model}, "
                  f"{model.n_layers} layers, {model.n_heads} heads, vocab {vocab_size})",
            config.device)


def truncation_counts(collate: Collator, splits: dict[str, Sequence[Example]]) -> dict:
    """Per split: how many examples (and tokens) the overflow policy cuts to ``max_len``.

    A run reports these (``results.json``, and a line on stderr when any is cut); under
    ``overflow="error"`` the first overlong example raises here, before training starts.
    """
    probe = Collator(collate.tokenizer, collate.config)
    out = {}
    for name, examples in splits.items():
        probe.reset_counts()
        for index, example in enumerate(examples):
            probe.encode(index, example)
        out[name] = {"examples": probe.n_truncated, "tokens": probe.n_truncated_tokens,
                     "of": len(examples)}
    return out


def truncation_line(counts: dict, max_len: int) -> str | None:
    """One line naming the cut examples per split, or None when nothing is cut."""
    cut = [f"{c['examples']}/{c['of']} {name} examples ({c['tokens']} tokens)"
           for name, c in counts.items() if c["examples"]]
    return f"truncated to max_len={max_len}: " + ", ".join(cut) if cut else None


def example_batch(config: TrainConfig, task: TaskData, n_examples: int, split: str = "train") -> Batch:
    """The first ``n_examples`` of a split, collated as the run collates them."""
    examples = {"train": task.train, "val": task.val, "test": task.test}.get(split)
    if examples is None:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if not 1 <= n_examples <= len(examples):
        raise ValueError(f"n_examples must lie in [1, {len(examples)}] for the {split} split, "
                         f"got {n_examples}")
    return make_collator(config, task)([(i, examples[i]) for i in range(n_examples)])


def run_key(config: TrainConfig, task: TaskData | None = None, **extra) -> dict:
    """The key of a result made from a run of ``config`` (:func:`maskdiff.jobs.reuse_or_run`):
    the config as the run saves it (the task's parameters filled in, e.g. ISAD's delimiter ids,
    when ``task`` is given), plus ``extra`` (how the run is scored)."""
    if task is not None:
        config = replace(config, estimator=resolve_estimator(config.estimator, task))
    return {"config": to_dict(config), **extra}


def _at(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def run_key_differences(old, new) -> list[str]:
    """:func:`maskdiff.jobs.differences` of two :func:`run_key` s, the configs compared as
    :func:`~maskdiff.training.config.config_differences` does (its free fields ignored, a field
    added by an upgrade at its default equal to its absence)."""
    if not (isinstance(old, dict) and isinstance(new, dict)
            and isinstance(old.get("config"), dict) and isinstance(new.get("config"), dict)):
        return differences(old, new)
    fields = config_differences(old["config"], new["config"])
    out = [f"config.{f}: {jsonio.dumps(_at(old['config'], f))} → {jsonio.dumps(_at(new['config'], f))}"
           for f in fields]
    rest = lambda key: {k: v for k, v in key.items() if k != "config"}  # noqa: E731
    return out + differences(rest(old), rest(new))


def run_legacy_key(run_dir: Path, **extra):
    """The key of a record written before records carried one: the run's own ``config.json``
    (``extra`` as asked: older records did not say how they were scored), or None."""
    def legacy(record: dict):
        try:
            saved = jsonio.load(Path(run_dir) / "config.json")
        except (OSError, ValueError):
            return None
        return {"config": saved, **extra} if isinstance(saved, dict) else None
    return legacy


def reuse_run_result(path: Path, config: TrainConfig, compute, *, task: TaskData | None = None,
                     what: str = "run", required: tuple[str, ...] = (), check=None,
                     **extra) -> dict:
    """:func:`maskdiff.jobs.reuse_or_run` for a result of one training run (its scores): keyed
    on :func:`run_key`, a changed configuration refused (the run is trained work)."""
    return reuse_or_run(path, run_key(config, task, **extra), compute, what=what,
                        required=required, check=check, differ=run_key_differences,
                        legacy=run_legacy_key(Path(path).parent, **plain(extra)))


FINISHED = "finished.json"


def finished_weights(config: TrainConfig, train,
                     task: TaskData | None = None) -> dict[str, torch.Tensor]:
    """The final weights of the run of ``config`` (a starting checkpoint several experiment
    workers share): ``OUT/finished.json`` names its last checkpoint and is reused under the same
    config; else ``train()`` (a resumable fit of ``config``) runs first, once, under the job's
    lock. A record whose checkpoint no longer loads is set aside and the run resumed. ``task``
    fills in the task's parameters the run saves (ISAD's delimiter ids), as :func:`run_key`."""
    run_dir, key = Path(config.out_dir), run_key(config, task)

    def last_checkpoint():  # one whose weights contradict its own config is damaged: skipped
        tokenizer = run_dir / TOKENIZER_FILE
        fits = weights_fit_config(load_tokenizer(tokenizer)) if tokenizer.is_file() else None
        return find_checkpoint(run_dir / "checkpoints", fits).checkpoint

    def compute() -> dict:
        found = last_checkpoint()
        if found is not None and config_differences(found.config, key["config"]):
            raise refusal(found.path, run_key_differences({"config": found.config}, key), "run")
        train()
        found = last_checkpoint()
        if found is None:
            raise CheckpointError(f"{run_dir}: training left no checkpoint")
        return {"steps": int(found.state["step"]),
                "checkpoint": found.path.relative_to(run_dir).as_posix()}

    for _ in range(2):
        record = reuse_or_run(run_dir / FINISHED, key, compute, what="run",
                              required=("steps", "checkpoint"), differ=run_key_differences)
        try:
            return load_checkpoint(run_dir / str(record["checkpoint"])).weights
        except CheckpointError as err:
            set_aside(run_dir / FINISHED, f"is damaged (its checkpoint: {err})")
    raise CheckpointError(f"{run_dir}: no loadable final checkpoint after resuming the run")
