"""What every maskdiff ``transformers.Trainer`` shares: its rows keep every column, and its own
state (``maskdiff_state.pt``) goes into each checkpoint before ``transformers`` finishes it and
comes back on resume (:mod:`maskdiff.hf.checkpoints`).

This module imports ``transformers``; the trainers that use it are imported lazily.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import transformers

from maskdiff.hf import checkpoints


class CheckpointedTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose subclass keeps state of its own: it defines
    :meth:`maskdiff_state` (plain tensors and strings, loaded with ``weights_only=True``) and
    :meth:`load_maskdiff_state`. Checkpoints (:mod:`maskdiff.hf.checkpoints`):
    ``maskdiff_state.pt`` is written before ``transformers`` finishes the folder and deletes
    older ones, so a kill leaves a complete checkpoint; ``resume_from_checkpoint=True``
    resumes from the newest complete one, saying on stderr which newer ones it skipped."""

    def maskdiff_state(self) -> dict:
        raise NotImplementedError

    def load_maskdiff_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    # -- data: keep every column (eligible, example_index are not forward arguments) -------
    def _remove_unused_columns(self, dataset, description=None):
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator

    # -- checkpoints ----------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``transformers.Trainer.train``; ``resume_from_checkpoint=True`` takes the newest
        complete checkpoint (one line on stderr per newer one skipped), a path is checked."""
        if resume_from_checkpoint is True:
            folder, skipped = checkpoints.newest_complete(self.args.output_dir)
            if skipped and self.args.process_index == 0:
                print(f"maskdiff: skipping {'; '.join(skipped)}: resuming from {folder}",
                      file=sys.stderr, flush=True)
            resume_from_checkpoint = str(folder)
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            reason = checkpoints.problem(resume_from_checkpoint)
            if reason is not None:
                raise ValueError(f"cannot resume from {resume_from_checkpoint}: {reason}; "
                                 f"resume_from_checkpoint=True resumes from the newest "
                                 f"complete checkpoint")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        # maskdiff's state first: transformers then writes the rest, trainer_state.json last,
        # and only then deletes older checkpoints (maskdiff.hf.checkpoints).
        if self.args.should_save:
            folder = f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            checkpoints.begin_checkpoint(os.path.join(self._get_output_dir(trial=trial), folder),
                                         self.maskdiff_state())
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_maskdiff_state(checkpoints.load_state(checkpoint))
