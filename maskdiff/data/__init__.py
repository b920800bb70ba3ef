"""Data: examples, tokenisers, collation into batches, JSONL files and the built-in tasks.

- :class:`Example` / :class:`TaskData` -- a prompt and a response; a task's splits;
- :class:`CharTokenizer`, :class:`BPETokenizer`, :func:`load_tokenizer` -- the tokenisers;
- :class:`Collator` / :class:`CollatorConfig` -- examples to :class:`~maskdiff.core.batch.Batch`
  with an explicit pad policy ("eos" or "exclude", the one vocabulary of both collators; alias
  "ignore" = "exclude") and overflow policy ("truncate" or "error");
- :func:`load_jsonl` / :func:`save_jsonl` -- SFT (``prompt``/``response``) or text rows;
- :func:`make_task` -- "arithmetic", "table", "text" (see :mod:`maskdiff.data.tasks`).
"""

from maskdiff.data.bpe import BPETokenizer
from maskdiff.data.char_tokenizer import CharTokenizer
from maskdiff.data.collate import (
    OVERFLOW_POLICIES,
    PAD_POLICIES,
    PAD_POLICY_ALIASES,
    Collator,
    CollatorConfig,
    EncodedExample,
    canonical_pad_policy,
)
from maskdiff.data.corpus import corpus_documents, corpus_info, load_corpus
from maskdiff.data.examples import Example, TaskData
from maskdiff.data.jsonl import load_jsonl, save_jsonl
from maskdiff.data.tables import syntax_token_ids
from maskdiff.data.tasks import (
    TASKS,
    TaskSpec,
    make_task,
    make_tokenizer,
    register_task,
    task_names,
)
from maskdiff.data.tokenizer import Tokenizer, control_ids, single_token_ids
from maskdiff.data.tokenizer_files import load_tokenizer

__all__ = [
    "BPETokenizer", "CharTokenizer", "Collator", "CollatorConfig", "EncodedExample", "Example",
    "OVERFLOW_POLICIES", "PAD_POLICIES", "PAD_POLICY_ALIASES", "TASKS", "TaskData", "TaskSpec",
    "Tokenizer", "canonical_pad_policy", "control_ids", "corpus_documents", "corpus_info",
    "load_corpus", "load_jsonl", "load_tokenizer", "make_task", "make_tokenizer",
    "register_task", "save_jsonl", "single_token_ids", "syntax_token_ids", "task_names",
]
