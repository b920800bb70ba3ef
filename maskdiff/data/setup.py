"""From a :class:`~maskdiff.training.config.DataConfig` to a :class:`TaskData`: built-in task or JSONL."""

from __future__ import annotations

from maskdiff.data.char_tokenizer import CharTokenizer
from maskdiff.data.bpe import BPETokenizer
from maskdiff.data.examples import TaskData
from maskdiff.data.holdout import holdout, separate
from maskdiff.data.jsonl import load_jsonl
from maskdiff.data.tasks import make_task


def load_task(config) -> TaskData:
    """The task a data config describes.

    With ``train_file`` (JSONL), ``val_file`` is the validation split, or else the last 10%
    of the training file's distinct rows is held out (at least one; repeated rows are counted
    and never on both sides: :mod:`maskdiff.data.holdout`); the test split is the validation
    split. The tokeniser is char-level over the characters of both files, or BPE of
    ``vocab_size`` trained on the training split (None: chosen from the corpus size,
    :mod:`maskdiff.data.sizing`).
    """
    if config.train_file is None:
        return make_task(config.task, config.n_train, config.n_val, config.n_test,
                         config.data_seed, tokenizer=config.tokenizer,
                         vocab_size=config.vocab_size, **config.difficulty)
    train = load_jsonl(config.train_file)
    if config.val_file is not None:  # leak-free and repeats counted: maskdiff.data.holdout
        split = separate(train, load_jsonl(config.val_file),
                         where=f"{config.train_file} and {config.val_file}")
    else:
        split = holdout(train, where=str(config.train_file))
    train, val = split.train, split.val
    texts = [e.prompt + e.response for e in list(train) + list(val)]
    if config.tokenizer == "char":
        tokenizer = CharTokenizer("".join(sorted(set("".join(texts)))))
    else:
        tokenizer = BPETokenizer.train([e.prompt + e.response for e in train], config.vocab_size)
    return TaskData(name="jsonl", train=tuple(train), val=tuple(val), test=tuple(val),
                    tokenizer=tokenizer, answer_delimiters=("####",),
                    params={"train_file": config.train_file, "val_file": config.val_file,
                            "n_train": len(train), "n_val": len(val),
                            "duplicates": split.counts, "notes": split.notes(config.train_file)})
