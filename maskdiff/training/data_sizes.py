"""A run's data sizes derived from its data (:mod:`maskdiff.data.sizing`), resolved before the
model is built: ``data.max_len="auto"`` / ``"pNN"`` becomes the number the run trains with."""

from __future__ import annotations

from dataclasses import replace

from maskdiff.data import Collator, CollatorConfig, TaskData
from maskdiff.data.sizing import derive_max_len, max_len_percentile
from maskdiff.training.config import TrainConfig

_UNBOUNDED = 1 << 30


def resolve_data_sizes(config: TrainConfig, task: TaskData) -> tuple[TrainConfig, list[str]]:
    """``config`` with a ``max_len`` rule replaced by its number, and one line per size that
    was derived (what the rule gave, how many training examples it truncates)."""
    data, notes = config.data, []
    percentile = max_len_percentile(data.max_len)
    if percentile is not None:
        probe = Collator(task.tokenizer, CollatorConfig(max_len=_UNBOUNDED, pad_policy=data.pad_policy,
                                                        overflow="truncate"))
        encoded = [probe.encode(i, e) for i, e in enumerate(task.train)]
        lengths = [len(x) for x in encoded]
        max_len = derive_max_len(lengths, [len(x.prompt_ids) for x in encoded], percentile)
        longer = sum(n > max_len for n in lengths)
        notes.append(f"data.max_len={data.max_len!r}: {max_len} tokens (p{percentile:g} of the "
                     f"{len(lengths)} training examples' tokenised lengths, longest {max(lengths)}, "
                     f"rounded up to a multiple of 8); {longer} of them are longer and are "
                     f"truncated")
        data = replace(data, max_len=max_len)
    if data.tokenizer == "bpe" and data.vocab_size is None:
        notes.append(f"data.vocab_size: {task.tokenizer.vocab_size} (BPE, chosen from the corpus "
                     f"size: maskdiff.data.sizing)")
    return replace(config, data=data), notes
