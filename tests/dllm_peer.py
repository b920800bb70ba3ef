"""dllm's ``MDLMTrainer.compute_loss`` and ``BD3LMTrainer.compute_loss``, read at run time from the
fixtures (never copied here).

``../shared/fixtures/models/dllm_ref`` (or ``$MASKDIFF_FIXTURES/models/dllm_ref``) holds dllm's
trainer files byte for byte; its SOURCE says how to run ``compute_loss`` outside dllm: stub the
``dllm.*`` package modules (the schedulers are its own ``alpha.py``, ``prepend_bos`` is taken
from its ``data.py`` by ``ast``, the metric callbacks are no-ops). :func:`peer_loss` then calls
the real ``compute_loss`` with the uniforms it draws replaced by given ones, so that both sides
see identical rates and masks; :func:`peer_bd3lm_loss` does the same for dllm's block diffusion
trainer (``bd3lm.py``, which also imports ``dllm.utils.collators.CollatorWrapper``: stubbed).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    env = os.environ.get("MASKDIFF_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures"


def dllm_ref_dir() -> Path:
    """The peer's folder, or a one-line pytest skip where a clone has no fixtures."""
    ref = fixtures_dir() / "models" / "dllm_ref"
    if not (ref / "mdlm.py").is_file():
        pytest.skip(f"dllm reference absent: {ref} (set MASKDIFF_FIXTURES to the fixtures folder)")
    return ref


def _package(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    return module


class _NoOp:
    def __init__(self, *args, **kwargs):
        pass

    def update(self, *args, **kwargs):
        pass


_CACHE: dict[str, types.ModuleType] = {}


def load_mdlm() -> types.ModuleType:
    """dllm's ``mdlm.py`` module (its ``MDLMTrainer``), imported with stubbed dllm packages."""
    return _load_dllm()["mdlm"]


def load_bd3lm() -> types.ModuleType:
    """dllm's ``bd3lm.py`` module (its ``BD3LMTrainer``, a subclass of ``MDLMTrainer``)."""
    return _load_dllm()["bd3lm"]


def _exec(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_dllm() -> dict[str, types.ModuleType]:
    if "mdlm" in _CACHE:
        return _CACHE
    ref = dllm_ref_dir()
    transformers = pytest.importorskip("transformers")
    saved = {k: v for k, v in sys.modules.items() if k == "dllm" or k.startswith("dllm.")}
    try:
        for name in ("dllm", "dllm.core", "dllm.core.trainers", "dllm.utils"):
            sys.modules[name] = _package(name)
        _exec("dllm.core.schedulers", ref / "alpha.py")
        configs = types.ModuleType("dllm.utils.configs")
        configs.TrainingArguments = transformers.TrainingArguments
        sys.modules["dllm.utils.configs"] = configs
        data = types.ModuleType("dllm.utils.data")
        tree = ast.parse((ref / "data.py").read_text())
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "prepend_bos")
        namespace = {"torch": torch}
        exec(compile(ast.Module(body=[fn], type_ignores=[]), str(ref / "data.py"), "exec"), namespace)
        data.prepend_bos = namespace["prepend_bos"]
        sys.modules["dllm.utils.data"] = data
        collators = types.ModuleType("dllm.utils.collators")
        collators.CollatorWrapper = type("CollatorWrapper", (), {})  # only its EOS-block wrapper uses it
        sys.modules["dllm.utils.collators"] = collators
        utils = types.ModuleType("dllm.core.trainers.utils")
        utils.NLLMetric = utils.PPLMetric = utils.OnEvaluateMetricsCallback = _NoOp
        sys.modules["dllm.core.trainers.utils"] = utils
        mdlm = _exec("dllm.core.trainers.mdlm", ref / "mdlm.py")
        bd3lm = _exec("dllm.core.trainers.bd3lm", ref / "bd3lm.py") if (ref / "bd3lm.py").is_file() else None
    finally:
        for name in [k for k in sys.modules if k == "dllm" or k.startswith("dllm.")]:
            del sys.modules[name]
        sys.modules.update(saved)
    _CACHE.update(mdlm=mdlm, bd3lm=bd3lm)
    return _CACHE


class _Torch:
    """``torch`` for the peer's module, with ``rand`` returning the given uniforms in turn."""

    def __init__(self, uniforms: list[torch.Tensor]):
        self._uniforms = list(uniforms)

    def rand(self, *shape, device=None, **kwargs):
        u = self._uniforms.pop(0)
        size = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        assert tuple(u.shape) == tuple(size), (tuple(u.shape), size)
        return u.clone()

    def __getattr__(self, name):
        return getattr(torch, name)


def peer_loss(model, input_ids, labels, attention_mask, u_t, u_mask, *, mask_token_id: int,
              bos_token_id: int = 0, loss_norm_type: str = "sequence",
              loss_weight_type: str = "scheduler", right_shift_logits: bool = False,
              loss_weights=None) -> torch.Tensor:
    """dllm's ``MDLMTrainer.compute_loss`` on one batch with rate uniforms ``u_t`` (B,) and mask
    uniforms ``u_mask`` (B, L). ``loss_weights(masked_mask, t)``, when given, replaces its
    ``_compute_loss_weights`` (how dllm's DreamTrainer plugs CART in)."""
    mdlm = load_mdlm()
    trainer = object.__new__(mdlm.MDLMTrainer)
    trainer.__dict__.update(
        scheduler=mdlm.LinearAlphaScheduler(), time_epsilon=1e-3,
        loss_weight_type=loss_weight_type, loss_norm_type=loss_norm_type,
        right_shift_logits=right_shift_logits, meter=_NoOp(),
        processing_class=types.SimpleNamespace(padding_side="right", mask_token_id=mask_token_id,
                                               bos_token_id=bos_token_id))
    if loss_weights is not None:
        trainer._compute_loss_weights = lambda t, inputs, masked_mask, **kw: loss_weights(masked_mask, t)
    inputs = {"input_ids": input_ids.clone(), "labels": labels.clone(),
              "attention_mask": attention_mask.clone()}
    real_torch = mdlm.torch
    mdlm.torch = _Torch([u_t, u_mask])
    try:
        return trainer.compute_loss(model, inputs)
    finally:
        mdlm.torch = real_torch


def peer_bd3lm_loss(model, input_ids, labels, u_t, u_mask, *, mask_token_id: int,
                    block_size: int, loss_norm_type: str = "sequence") -> torch.Tensor:
    """dllm's ``BD3LMTrainer.compute_loss`` on one unpadded batch (it builds its own three-part
    mask and ignores any padding mask) with rate uniforms ``u_t`` (B,) and mask uniforms
    ``u_mask`` (B, L): one ``t`` per sequence, the model called on ``[xt ; x0]`` with dllm's SDPA
    boolean mask (1, 1, 2L, 2L) and position ids."""
    bd3lm = load_bd3lm()
    if bd3lm is None:
        pytest.skip("dllm's bd3lm.py is absent from the fixtures")
    trainer = object.__new__(bd3lm.BD3LMTrainer)
    trainer.__dict__.update(
        scheduler=load_mdlm().LinearAlphaScheduler(),
        time_epsilon=1e-3, loss_weight_type="scheduler", loss_norm_type=loss_norm_type,
        right_shift_logits=False, meter=_NoOp(), block_size=block_size,
        accelerator=types.SimpleNamespace(unwrap_model=lambda m: m),
        processing_class=types.SimpleNamespace(padding_side="right", mask_token_id=mask_token_id,
                                               bos_token_id=0))
    inputs = {"input_ids": input_ids.clone(), "labels": labels.clone(),
              "attention_mask": torch.ones_like(input_ids)}
    real_torch = bd3lm.torch
    bd3lm.torch = _Torch([u_t, u_mask])
    # a flex model compiles dllm's mask function, which torch.compile imports by module name
    present = "dllm.core.trainers.bd3lm" in sys.modules
    sys.modules["dllm.core.trainers.bd3lm"] = bd3lm
    try:
        return trainer.compute_loss(model, inputs)
    finally:
        bd3lm.torch = real_torch
        if not present:
            del sys.modules["dllm.core.trainers.bd3lm"]
