"""The lm-evaluation-harness model ``maskdiff`` (``pip install -e '.[eval]'``; docs/evaluation.md).

Importing this module imports ``lm_eval`` and registers the model, so that
``lm_eval.simple_evaluate(model="maskdiff", model_args="run=RUN")`` works;
``maskdiff lm-eval ...`` imports it and forwards its arguments to the harness's own command line.

- ``loglikelihood``: the Monte-Carlo ELBO of the continuation given the context
  (:func:`maskdiff.evaluation.scoring.loglikelihoods`), a lower bound on the log-likelihood,
  with the evaluator's variance-reduced scheme; each request's standard error is kept in
  :attr:`MaskdiffLM.details` (and appended to ``se_file`` when given).
- ``loglikelihood_rolling``: the same ELBO over the harness's rolling windows of the text.
- ``generate_until``: low-confidence block decoding, cut at EOS and the request's ``until``.
- chat templates: the HF tokenizer's (``--apply_chat_template``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from maskdiff import jsonio
from maskdiff.evaluation.model import load_eval_model
from maskdiff.evaluation.scoring import DEFAULT_RATES, generate, loglikelihoods

MODEL_NAME = "maskdiff"
LOAD_ARGS = ("checkpoint", "mask_token_id", "trust_remote_code", "logit_shift", "dtype",
             "attention", "auto_class", "max_length")


@register_model(MODEL_NAME)
class MaskdiffLM(LM):
    """``model_args``: ``run=DIR`` (a maskdiff run; ``checkpoint=best|latest``) or
    ``pretrained=NAME_OR_PATH`` (a HF model or PEFT adapter directory; ``trust_remote_code``,
    ``mask_token_id``, ``logit_shift``, ``dtype``, ``attention``, ``auto_class``), and
    ``scheme``, ``rates``, ``seed`` (the ELBO), ``gen_length``, ``steps``, ``block_length``
    (decoding), ``max_length``, ``batch_size``, ``device``, ``greedy_check``, ``se_file``."""

    def __init__(self, run: str | None = None, pretrained: str | None = None, *,
                 scheme: str | None = None, rates: int | None = DEFAULT_RATES, seed: int = 1234,
                 gen_length: int | None = None, steps: int | None = None,
                 block_length: int | None = None, batch_size: int | str | None = 16,
                 device: str | None = None, greedy_check: bool = True,
                 se_file: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(LOAD_ARGS) - {"max_batch_size"})
        if unknown:
            raise ValueError(f"unknown maskdiff model_args {unknown}; known: run, pretrained, "
                             f"scheme, rates, seed, gen_length, steps, block_length, "
                             f"batch_size, device, greedy_check, se_file, {', '.join(LOAD_ARGS)}")
        load = {k: v for k, v in kwargs.items() if k in LOAD_ARGS and v is not None}
        self._device = _usable_device(device)
        self.lm = load_eval_model(run=run, hf=pretrained, device=self._device, **load)
        self.scheme, self.seed = scheme, int(seed)
        self.rates = None if rates is None else int(rates)
        self.decoding = {"gen_length": gen_length, "steps": steps, "block_length": block_length}
        auto = batch_size is None or str(batch_size).startswith("auto")
        self.batch_size = 16 if auto else int(batch_size)
        self.greedy_check = bool(greedy_check)
        self.se_file = None if se_file is None else Path(se_file)
        self.details: list[dict[str, Any]] = []
        self._scored = 0  # requests scored so far: the next request's draw index

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string),
                                       additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """``model_args`` win over the harness's own ``batch_size`` / ``device`` /
        ``max_batch_size`` (its command line sends them whether given or not), instead of the
        base class's ``TypeError: got multiple values for keyword argument``."""
        merged = {k: v for k, v in (additional_config or {}).items() if v is not None}
        merged.update(arg_dict)
        return cls(**merged)

    # ------------------------------------------------------------------ likelihoods
    def _score(self, pairs: list[tuple[str, str]], greedy_check: bool) -> list:
        scores = loglikelihoods(self.lm, pairs, scheme=self.scheme, rates=self.rates,
                                seed=self.seed, batch_size=self.batch_size,
                                greedy_check=greedy_check, device=self._device,
                                first_index=self._scored)
        self._scored += len(pairs)
        rows = [{"context": c, "continuation": x, **s.to_dict()} for (c, x), s in zip(pairs, scores)
                if isinstance(c, str)]  # token windows (rolling) are summed, not listed
        self.details.extend(rows)
        if self.se_file is not None:
            with self.se_file.open("a") as f:
                f.writelines(jsonio.dumps(r) + "\n" for r in rows)
        return scores

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args[:2]) for r in requests]
        scores = self._score(pairs, self.greedy_check)
        out = [(s.loglikelihood, bool(s.is_greedy)) for s in scores]
        for pair, result in zip(pairs, out):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The ELBO of the whole text: the sum over the harness's disjoint rolling windows,
        each scored given its (token) context, up to ``max_length`` tokens at a time."""
        limit = self.lm.max_length or 2048
        prefix = self.lm.eos_token_id if self.lm.eos_token_id is not None else self.lm.mask_token_id
        out = []
        for request in requests:
            (text,) = request.args
            windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=self.lm.encode_continuation(text), prefix_token=prefix,
                max_seq_len=limit, context_len=1)]
            total = sum(s.loglikelihood for s in self._score(windows, greedy_check=False))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        by_kwargs: dict[str, list[int]] = {}
        for k, request in enumerate(requests):
            by_kwargs.setdefault(jsonio.dumps(request.args[1], sort_keys=True, default=str), []).append(k)
        for members in by_kwargs.values():
            kwargs = dict(requests[members[0]].args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            cap = kwargs.get("max_gen_toks")
            texts = generate(self.lm, [requests[k].args[0] for k in members],
                             until=[until] * len(members), batch_size=self.batch_size,
                             max_new_tokens=None if cap is None else int(cap),
                             device=self._device, **self.decoding)
            for k, text in zip(members, texts):
                out[k] = text
                self.cache_hook.add_partial("generate_until", requests[k].args, text)
        return out  # type: ignore[return-value]

    def get_model_info(self) -> dict[str, Any]:
        """Added by the harness to its results' ``config`` after a run: the count of characters a
        native run's tokenizer never saw (each read as its unknown id), said once on stderr."""
        return {"unknown_characters": self.lm.report_unknown(),
                "unknown_character_set": "".join(sorted(self.lm.unknown))}

    # ------------------------------------------------------------------ chat templates
    @property
    def tokenizer_name(self) -> str:
        return self.lm.name.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.lm.chat_template

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        return self.lm.apply_chat_template(chat_history, add_generation_prompt)


def _usable_device(device: str | None) -> str:
    """``device``, or the CPU when none is given or the harness's default CUDA is absent."""
    import torch

    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:
            print(f"maskdiff lm-eval: device {device!r} is not available; using the CPU",
                  file=sys.stderr)
        return "cpu"
    return str(device)


def cli(argv: list[str]) -> int:
    """The harness's own command line with the ``maskdiff`` model registered (``maskdiff lm-eval``)."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0
