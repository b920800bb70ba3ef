"""Where a probed model comes from: a maskdiff run, a preset trained once, or a Hugging Face
model — with the examples it is probed on. ``maskdiff decompose`` and ``maskdiff fit-pots``
both load their model here."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from maskdiff.core.batch import Batch
from maskdiff.jobs import load_record
from maskdiff.training.config import TrainConfig
from maskdiff.training.runs import finished_weights

__all__ = ["ModelSource", "load_model_source"]


@dataclass
class ModelSource:
    """A model and the data it is diagnosed on: everything the experiment needs from it."""

    model: torch.nn.Module
    config: TrainConfig
    task: Any  # maskdiff.data.TaskData
    mask_token_id: int
    description: dict[str, Any]
    hf: Any = None  # a maskdiff.hf.HFSource: examples are its rows

    def examples(self, n: int, split: str = "train") -> Batch:
        """The first ``n`` examples of ``split``, collated as the run collates them."""
        from maskdiff.training.runs import example_batch

        if self.hf is not None:
            return self.hf.batch(min(n, len(self.hf.rows)))
        available = len({"train": self.task.train, "val": self.task.val,
                         "test": self.task.test}[split])
        return example_batch(self.config, self.task, min(n, available), split=split)


def load_model_source(*, run: str | Path | None = None, preset: str | None = None,
                      out: str | Path, device: str = "cpu", task: str | None = None,
                      quiet: bool = False, hf: str | None = None, data: str | None = None,
                      mask_token_id: int | None = None, trust_remote_code: bool = False,
                      hf_options: dict[str, Any] | None = None) -> ModelSource:
    """The model to probe: ``run`` (a maskdiff run directory: its best checkpoint, on its
    own data) or ``preset`` (that preset's model, trained once into ``out/model[-TASK]`` and
    reused on restart; ``task`` overrides the preset's task). ``hf``: a Hugging Face
    model probed on the rows of ``data`` (JSONL), loaded with ``hf_options``
    (:func:`maskdiff.hf.load_hf_model` keywords: ``logit_shift``, ``attention``, ``auto_class``,
    ``mask_token_id``, ``trust_remote_code``)."""
    from maskdiff.data.setup import load_task
    from maskdiff.training.runs import load_run

    if sum(x is not None for x in (run, preset, hf)) != 1:
        raise ValueError("give exactly one model source: run=DIR, preset=NAME or hf=NAME")
    if hf is not None:
        options = {"mask_token_id": mask_token_id, "trust_remote_code": trust_remote_code,
                   **(hf_options or {})}
        return _hf_source(hf, data, options=options, device=device)
    if run is not None:
        if task is not None:
            raise ValueError(f"task={task!r} applies to a preset only; a run keeps its own data")
        loaded = load_run(run, device=device)
        model_task = load_task(loaded.config.data)
        return ModelSource(model=loaded.model, config=loaded.config, task=model_task,
                           mask_token_id=model_task.tokenizer.mask_id,
                           description={"run": str(run), "checkpoint": str(loaded.checkpoint),
                                        **_training_summary(Path(run))})
    from maskdiff.training.presets import preset as preset_config
    from maskdiff.training.trainer import Trainer

    config = preset_config(preset)
    if task is not None:
        config = replace(config, data=replace(config.data, task=task))
    model_dir = Path(out) / ("model" if task is None else f"model-{task}")
    config = replace(config, out_dir=str(model_dir), device=device)
    start = time.perf_counter()
    # Reused only when it finished under this very config (maskdiff.jobs): a changed preset
    # is refused in one line instead of diagnosing the old model.
    finished_weights(config, lambda: Trainer(config, quiet=quiet).fit(resume=True))
    loaded = load_run(model_dir, device=device)
    model_task = load_task(loaded.config.data)
    return ModelSource(model=loaded.model, config=loaded.config, task=model_task,
                       mask_token_id=model_task.tokenizer.mask_id,
                       description={"preset": preset, "task": loaded.config.data.task,
                                    "run": str(model_dir), "checkpoint": str(loaded.checkpoint),
                                    "load_seconds": time.perf_counter() - start,
                                    **_training_summary(model_dir)})


def _hf_source(name: str, data: str | None, *, options: dict[str, Any], device: str) -> ModelSource:
    """A Hugging Face model (``maskdiff.hf``) on the rows of a JSONL file. It has no built-in
    task: ISAD and SyRM (which need the task's delimiter and syntax tokens) are skipped."""
    from types import SimpleNamespace

    from maskdiff.hf import load_hf_source

    if data is None:
        raise ValueError("a Hugging Face model needs data=FILE.jsonl (--data) to be probed on")
    source = load_hf_source(name, data, device=device, **options)
    task = SimpleNamespace(name=f"hf:{name}", syntax_tokens=(), delimiter_ids=lambda: ())
    return ModelSource(model=source.model, config=TrainConfig(), task=task,
                       mask_token_id=source.mask_token_id, hf=source,
                       description={"hf": name, "data": str(data), "rows": len(source.rows)})


def _training_summary(run_dir: Path) -> dict[str, Any]:
    doc = load_record(run_dir / "results.json")
    if doc is None:
        return {}
    return {key: doc.get(key) for key in ("steps", "best_val", "best_step", "seconds",
                                          "n_parameters")}
