"""Block diffusion on a Hugging Face model (docs/method.md §12, docs/huggingface.md).

Under a :class:`~maskdiff.core.blocks.BlockLayout` the estimator calls the model on
``[xt ; x0]`` (B, 2L) with a (B, 1, 2L, 2L) boolean attention pattern and ``position_ids``
``[0..L-1, 0..L-1]`` (B, 2L). :func:`check_block_model` says, in one line, why a model cannot
be trained that way, before the first step:

- its family's code takes a 2-D mask only, or no ``position_ids`` (LLaDA:
  :attr:`maskdiff.hf.families.Family.block_mask` False), or the adapter passes no 4-D mask
  (``attention`` other than ``"4d"``);
- it shifts its logits (Dream, ``logit_shift=1``): token ``i``'s logits come from position
  ``i - 1``, and for the first token of a block that position lies in the previous block, whose
  query the three-part mask keeps from seeing the token's own block (noisy or clean): the block
  ELBO's term for that token would be conditioned on the wrong context. dllm's ``BD3LMTrainer``
  applies its ``right_shift_logits`` to the ``[xt ; x0]`` logits without such a check; maskdiff
  refuses.
- its attention implementation takes no 4-D mask (``flash_attention_2``, ...). SDPA (the
  default) and eager take the boolean pattern; for ``flex_attention`` the adapter passes the
  same pattern as a flex ``BlockMask`` (as dllm does: LLaDA2's flex path with a tensor mask
  crashed the process on the CPU, ``double free or corruption``).
"""

from __future__ import annotations

from torch import nn

from maskdiff.core.blocks import BlockLayout
from maskdiff.hf.adapter import AdapterOptions, model_config
from maskdiff.hf.families import GENERIC, family_of

__all__ = ["check_block_model", "block_layout"]

PATTERN_ATTENTION = ("sdpa", "eager", "flex_attention")


def block_layout(block_size: int | None, block_rates: str = "block") -> BlockLayout | None:
    """The trainer's layout: None without ``block_size`` (plain masked diffusion)."""
    if block_size is None:
        if block_rates != "block":
            raise ValueError(f"block_rates={block_rates!r} needs block_size")
        return None
    return BlockLayout(block_size, block_rates)


def check_block_model(model: nn.Module, options: AdapterOptions, layout: BlockLayout) -> None:
    """Raise one line naming the model and what block training needs, where it cannot run."""
    config = model_config(model)
    family = family_of(config)
    name = family.name if family is not GENERIC else (
        getattr(config, "model_type", None) or type(model).__name__)
    what = f"block training (block_size={layout.block_size})"
    needs = "a (B, 1, 2L, 2L) boolean attention mask and position_ids"
    if family.block_mask is False:
        raise ValueError(f"{name}: its model code takes a 2-D attention mask only (no "
                         f"position_ids); {what} needs {needs} (LLaDA2 takes them)")
    if options.attention != "4d":
        raise ValueError(f"{name}: {what} needs {needs}: pass attention='4d' (this adapter "
                         f"has attention={options.attention!r})")
    if options.logit_shift:
        raise ValueError(f"{name}: {what} is refused with logit_shift={options.logit_shift}: "
                         f"a block's first token would be read at the previous block's last "
                         f"position, which the block mask keeps from seeing its block; train a "
                         f"family with logit_shift=0 (LLaDA2)")
    implementation = getattr(config, "_attn_implementation", None)
    if implementation is not None and implementation not in PATTERN_ATTENTION:
        raise ValueError(f"{name}: {what} passes {needs} as a tensor, which "
                         f"attn_implementation={implementation!r} does not take; load the "
                         f"model with attn_implementation='sdpa' (or 'eager', 'flex_attention')")
