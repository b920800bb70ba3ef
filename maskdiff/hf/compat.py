"""Load remote code written for transformers 4.x under transformers 5.x, unchanged.

Diffusion LLMs ship their own modeling code (``auto_map`` + ``trust_remote_code``), written
against transformers 4.x (dllm pins 4.57). Under 5.x it fails in a handful of recurring ways; each
shim below fixes one of them, is named after the failure, and targets the transformers *pattern*
(a list-valued ``_tied_weights_keys``, a ``tie_weights()`` without keywords, ...), not a file, so
a family never seen before that uses the same 4.x patterns loads too. The user's files are never
edited: shims patch the resolved classes (class attributes and methods) and add two missing names
to transformers' own modules. Under 4.x, :func:`loading` applies only the CPU-device shim.

Shims (:data:`SHIMS`: name -> the failure it fixes) are applied by :func:`loading` /
:func:`resolve_class` and the names applied are returned, so the loader can say which were used.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["SHIMS", "transformers_major", "loading", "resolve_class", "patch_config_class",
           "patch_model_class", "choose_auto_class", "init_random_weights", "applied_shims"]

SHIMS = {
    "is_torch_fx_available": "ImportError: cannot import name 'is_torch_fx_available' "
                             "(removed from transformers.utils in 5.x)",
    "rope_default": "KeyError: 'default' (ROPE_INIT_FUNCTIONS lost its 'default' entry in 5.x)",
    "tied_weights_list": "'list' object has no attribute 'keys' in save_pretrained "
                         "(4.x _tied_weights_keys is a list, 5.x wants {target: source})",
    "all_tied_weights_keys": "AttributeError: ... has no attribute 'all_tied_weights_keys' "
                             "(an __init__ that never calls post_init())",
    "tie_weights_missing_keys": "tie_weights() got an unexpected keyword argument 'missing_keys'",
    "use_cache": "'...Config' object has no attribute 'use_cache' (5.x configs drop it)",
    "tie_word_embeddings": "'...Config' object has no attribute 'tie_word_embeddings' (4.x "
                           "configs always had it, default True)",
    "cpu_init_device": "'Torch not compiled with CUDA enabled' (an __init__ that hard-codes "
                       "device='cuda' on a CPU-only torch)",
}

_APPLIED: set[str] = set()


def applied_shims() -> tuple[str, ...]:
    """The names of the shims applied so far in this process, sorted."""
    return tuple(sorted(_APPLIED))


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# ----------------------------------------------------------------------------- module-level shims
def _default_rope_parameters(config: Any = None, device: Any = None, seq_len: int | None = None,
                             **rope_kwargs: Any) -> tuple[torch.Tensor, float]:
    """Plain RoPE inverse frequencies, ``base ** (-2i / dim)``: the 4.x ``'default'`` entry."""
    if rope_kwargs:
        base, dim = rope_kwargs["base"], int(rope_kwargs["dim"])
    else:
        params = getattr(config, "rope_parameters", None) or {}
        base = getattr(config, "rope_theta", None) or params.get("rope_theta") or 10000.0
        factor = getattr(config, "partial_rotary_factor", None) or params.get(
            "partial_rotary_factor") or 1.0
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads)
        dim = int(head_dim * factor)
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (float(base) ** exponent), 1.0


def _module_shims() -> None:
    """Names 4.x code imports from transformers that 5.x removed (added only where missing)."""
    from transformers import modeling_rope_utils
    from transformers.utils import import_utils

    if not hasattr(import_utils, "is_torch_fx_available"):
        def is_torch_fx_available() -> bool:
            return True

        import_utils.is_torch_fx_available = is_torch_fx_available
        _APPLIED.add("is_torch_fx_available")
    if "default" not in modeling_rope_utils.ROPE_INIT_FUNCTIONS:
        modeling_rope_utils.ROPE_INIT_FUNCTIONS["default"] = _default_rope_parameters
        _APPLIED.add("rope_default")


class _CpuForCuda(TorchFunctionMode):
    """Drops an explicit ``device="cuda"`` when this torch has no CUDA: a factory then builds on
    the default device (CPU), a ``.to("cuda")`` leaves the tensor where it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            del kwargs["device"]
            _APPLIED.add("cpu_init_device")
        if getattr(func, "__name__", "") == "to" and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], *args[2:])
            _APPLIED.add("cpu_init_device")
        return func(*args, **kwargs)


def _is_cuda(value: Any) -> bool:
    try:
        return isinstance(value, (str, torch.device)) and torch.device(value).type == "cuda"
    except (RuntimeError, TypeError):
        return False


@contextlib.contextmanager
def loading(config: Any = None, *, trust_remote_code: bool = True) -> Iterator[None]:
    """The context a remote-code model is resolved, built and loaded in: the module-level shims
    under 5.x, and ``device="cuda"`` redirected on a CPU-only torch."""
    if trust_remote_code and transformers_major() >= 5:
        _module_shims()
    if torch.cuda.is_available():
        yield
        return
    with _CpuForCuda():
        yield


# ----------------------------------------------------------------------------- class shims
def _is_remote(cls: type) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return not module.startswith(("transformers.", "torch.", "builtins")) and module != "transformers"


def _tied_list_property(targets: tuple[str, ...]) -> property:
    def tied(self) -> dict[str, str]:
        embedding = self.get_input_embeddings() if hasattr(self, "get_input_embeddings") else None
        weight = getattr(embedding, "weight", None)
        source = next((n for n, p in self.named_parameters() if p is weight), None)
        return {t: source for t in targets if source is not None and t != source}

    return property(tied)


def _wrap_init(cls: type) -> None:
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if type(self).__init__ is __init__ and not hasattr(self, "all_tied_weights_keys"):
            self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=False)
            for name in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict",
                         "_no_split_modules", "_skip_keys_device_placement",
                         "_keys_to_ignore_on_load_unexpected", "_keys_to_ignore_on_load_missing",
                         "_keys_to_ignore_on_save"):
                setattr(self, name, set(getattr(self, name, None) or []))
            _APPLIED.add("all_tied_weights_keys")

    cls.__init__ = __init__


def _wrap_tie_weights(cls: type) -> None:
    original = cls.__dict__["tie_weights"]

    @functools.wraps(original)
    def tie_weights(self, *args: Any, **kwargs: Any) -> Any:
        return original(self)

    cls.tie_weights = tie_weights
    _APPLIED.add("tie_weights_missing_keys")


def patch_model_class(cls: type) -> type:
    """Apply the class shims to a remote model class, its remote bases and the other model
    classes of its module (submodels: a headless base model inside an LM), idempotently."""
    if transformers_major() < 5:
        return cls
    module = sys.modules.get(cls.__module__)
    siblings = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, nn.Module)
                and c.__module__ == cls.__module__] if module is not None else []
    for klass in [*cls.__mro__, *siblings]:
        if not _is_remote(klass) or klass.__dict__.get("_maskdiff_compat"):
            continue
        tied = klass.__dict__.get("_tied_weights_keys")
        if isinstance(tied, (list, tuple)):
            klass._tied_weights_keys = _tied_list_property(tuple(tied))
            _APPLIED.add("tied_weights_list")
        tie = klass.__dict__.get("tie_weights")
        if tie is not None and "missing_keys" not in inspect.signature(tie).parameters and not any(
                p.kind is p.VAR_KEYWORD for p in inspect.signature(tie).parameters.values()):
            _wrap_tie_weights(klass)
        if "__init__" in klass.__dict__ and hasattr(klass, "get_expanded_tied_weights_keys"):
            _wrap_init(klass)
        klass._maskdiff_compat = True
    return cls


_CONFIG_4X_DEFAULTS = {"use_cache": False, "tie_word_embeddings": True}


def patch_config_class(cls: type) -> type:
    """Keep the attributes 4.x's ``PretrainedConfig`` always had (``use_cache``, and
    ``tie_word_embeddings``, default True) on a remote config class: 5.x drops them. The value
    passed, else the class's own default, else 4.x's."""
    if transformers_major() < 5 or not _is_remote(cls) or cls.__dict__.get("_maskdiff_compat"):
        return cls
    original = cls.__init__
    signature = inspect.signature(original).parameters

    @functools.wraps(original)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for name, fallback in _CONFIG_4X_DEFAULTS.items():
            if _has(self, name):
                continue
            default = signature.get(name)
            own = (default.default if default is not None
                   and default.default is not inspect.Parameter.empty else fallback)
            self.__dict__[name] = bool(kwargs.get(name, own))
            _APPLIED.add(name)

    cls.__init__ = __init__
    cls._maskdiff_compat = True
    return cls


def _has(config: Any, name: str) -> bool:
    try:
        getattr(config, name)
    except AttributeError:
        return False
    return True


def resolve_class(config: Any, auto_class: str, name_or_path: str) -> type:
    """The remote class ``auto_map[auto_class]`` names, with the class shims applied."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    reference = config.auto_map[auto_class]
    if isinstance(reference, (list, tuple)):
        reference = reference[0]
    cls = get_class_from_dynamic_module(reference, name_or_path)
    cls.register_for_auto_class(auto_class)  # save_pretrained copies the code, as AutoModel's
    return patch_model_class(cls)


def resolve_config_class(auto_map: dict, name_or_path: str) -> type | None:
    """The remote config class (shimmed), or None when the map names none."""
    reference = auto_map.get("AutoConfig")
    if not reference:
        return None
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    cls = get_class_from_dynamic_module(reference, name_or_path)
    cls.register_for_auto_class()
    return patch_config_class(cls)


def choose_auto_class(config: Any, auto_class: str | None) -> str:
    """``auto_class`` when given, else the first of the family's ``auto_classes`` the config's
    ``auto_map`` names (see :mod:`maskdiff.hf.families`)."""
    from maskdiff.hf.families import family_of

    if auto_class is not None:
        return auto_class
    auto_map = getattr(config, "auto_map", None) or {}
    if not auto_map:
        return "AutoModelForMaskedLM"
    for name in family_of(config).auto_classes:
        if name in auto_map:
            return name
    raise ValueError(f"auto_map names none of the LM classes, got {sorted(auto_map)}; "
                     f"pass auto_class=")


def init_random_weights(model: Any) -> None:
    """Initialise every parameter the way the model's ``_init_weights`` does (4.x and 5.x)."""
    init = getattr(model, "_init_weights", None)
    if callable(init):
        for module in model.modules():
            init(module)

