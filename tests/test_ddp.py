"""DistributedDataParallel (CPU gloo, 2 processes): masks and schedules identical on every rank.

Made deterministic (it aborted 1 run in 5 with "terminate called without an active exception"):
rendezvous through a file store in the test's own folder (no port to race for), a barrier before
``destroy_process_group`` in ``finally`` (a rank leaving while the other is still in a collective
made gloo abort), a gloo timeout, the spawn start method, and a join with a deadline that kills
the workers instead of hanging the suite.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import prunekit as pk
from prunekit.core.masks import masked_parameters

WORLD = 2
STEPS = 12


DEADLINE_S = 240.0


def _worker(rank: int, store: str, out_dir: str, sync: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        torch.manual_seed(0)  # same init on every rank (DDP would broadcast it anyway)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        cfg = pk.PrunerConfig(
            schedule=pk.CubicSchedule(final_sparsity=0.75, start_step=0, end_step=6, frequency=2),
            criterion="random",  # draws from each rank's own RNG: only synchronisation keeps ranks equal
            regrowth=pk.RegrowthConfig(method="set", every=3, drop_fraction=0.4, end_step=STEPS),
            seed=100 + rank,  # different SET generators per rank, on purpose
            sync_distributed=sync,
        )
        pruner = pk.Pruner(ddp, cfg, optimizer=opt)
        torch.manual_seed(1000 + rank)  # each rank sees its own data and criterion randomness
        targets = []
        for _ in range(STEPS):
            x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
            loss = nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            targets.append(pruner.step())
        tensors = {mp_.fqn + ".mask": mp_.mask.to(torch.uint8) for mp_ in masked_parameters(model)}
        tensors.update({n: p.detach().clone() for n, p in model.named_parameters()})
        tensors["targets"] = torch.tensor(targets, dtype=torch.float64)
        tensors["sparsity"] = torch.tensor([pruner.sparsity()], dtype=torch.float64)
        save_file(tensors, str(Path(out_dir) / f"rank{rank}.safetensors"))
    finally:
        try:
            dist.barrier()  # nobody leaves while the other rank is still in a collective
        finally:
            dist.destroy_process_group()


def _load(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def _run(tmp_path: Path, sync: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    store = tmp_path / "rendezvous"  # a fresh file per run: no port, no leftover state
    ctx = mp.start_processes(
        _worker, args=(str(store), str(tmp_path), sync), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"DDP workers did not finish within {DEADLINE_S:.0f} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=10)
    return _load(tmp_path / "rank0.safetensors"), _load(tmp_path / "rank1.safetensors")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_masks_and_schedule_identical_on_every_rank(tmp_path: Path) -> None:
    r0, r1 = _run(tmp_path, sync=True)
    masks = [k for k in r0 if k.endswith(".mask")]
    assert len(masks) == 2
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # masks, weights, schedule targets, sparsity
    assert float(r0["sparsity"]) == pytest.approx(0.75, abs=1 / (8 * 32 + 32 * 4))
    expected = pk.CubicSchedule(final_sparsity=0.75, start_step=0, end_step=6, frequency=2)
    assert r0["targets"].tolist() == [expected.sparsity(t) for t in range(STEPS)]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_without_synchronisation_ranks_disagree(tmp_path: Path) -> None:
    """Negative control: the test above would catch a pruner that forgot to synchronise."""
    r0, r1 = _run(tmp_path, sync=False)
    assert any(not torch.equal(r0[k], r1[k]) for k in r0 if k.endswith(".mask"))
