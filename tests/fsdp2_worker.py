"""FSDP2 on CPU with gloo, run by tests/test_hf_scale.py under torchrun (not a test module).

``train(rank, world, mesh)`` trains the tiny BERT of tests/test_hf.py for a few AdamW steps on
a global batch of 4 rows with maskdiff's estimator (Mirror masks, stratified rates: a batch-level
layout, so the position in the global batch matters too). Each rank takes its slice of the
global batch; its draws are keyed on (seed, step, example index, global position) exactly as
MaskedDiffusionTrainer keys them. Under torchrun every layer and the root are ``fully_shard``-ed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from maskdiff.core.masking import Mirror
from maskdiff.core.objective import Estimator
from maskdiff.core.samplers import Stratified
from maskdiff.core.seeding import BatchRandomness
from maskdiff.hf import HFAdapter, MaskedDiffusionCollator

from test_hf import MASK, PAD, sft_rows, tiny_bert

GLOBAL_BATCH, STEPS, SEED = 4, 3, 5


def train(rank: int, world: int, mesh) -> tuple[dict[str, torch.Tensor], list[float]]:
    torch.manual_seed(0)
    model = tiny_bert()
    if mesh is not None:
        from torch.distributed.fsdp import fully_shard

        for layer in model.bert.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    adapter = HFAdapter(model, mask_token_id=MASK, pad_token_id=PAD)
    estimator = Estimator(rate_sampler=Stratified(), masker=Mirror(), mask_token_id=MASK)
    collate = MaskedDiffusionCollator(PAD, pad_to_multiple_of=16)
    rows = sft_rows(GLOBAL_BATCH * STEPS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    local, losses = GLOBAL_BATCH // world, []
    for step in range(STEPS):
        positions = list(range(rank * local, (rank + 1) * local))
        index = [step * GLOBAL_BATCH + p for p in positions]
        batch = collate.batch([{**rows[i], "example_index": i} for i in index])
        randomness = BatchRandomness.for_batch(SEED, step, index, positions, GLOBAL_BATCH)
        loss = estimator(adapter, batch, randomness, update_control=False).loss
        # FSDP2 averages gradients over ranks: the mean of equal-sized local means.
        loss.backward()
        opt.step()
        opt.zero_grad()
        total = loss.detach().clone()
        if mesh is not None:
            torch.distributed.all_reduce(total)
            total /= world
        losses.append(float(total))
    state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
             for k, v in model.state_dict().items()}
    return state, losses


def main(out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    state, losses = train(rank, world, init_device_mesh("cpu", (world,)))
    if rank == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(out) / "weights.pt")
        (Path(out) / "losses.json").write_text(json.dumps(losses))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
