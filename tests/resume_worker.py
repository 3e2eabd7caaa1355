"""A training run used by test_resume.py: killed with SIGKILL mid-run, then resumed.

Run: python tests/resume_worker.py OUT.safetensors [CHECKPOINT.safetensors] [mode]
Prints one ``step N`` line per optimisation step (flushed) so the parent can kill it at a chosen step.
mode ``train`` (default): fit with a Pruner (cubic schedule + RigL regrowth), Adam, dropout, and a
dataset whose augmentation draws from numpy's and Python's RNGs, so every RNG state matters.
mode ``lottery``: a short lottery-ticket run with a reinit control, checkpointed per level.
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

import prunekit as pk
from prunekit.core.datasets import digits


class NoisyDigits(Dataset):  # type: ignore[type-arg]
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.from_numpy(np.random.normal(0.0, 0.05, size=tuple(self.x[i].shape)).astype(np.float32))
        return self.x[i] * (0.9 + 0.2 * random.random()) + noise, self.y[i]


def main() -> None:
    out = sys.argv[1]
    ckpt = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    mode = sys.argv[3] if len(sys.argv) > 3 else "train"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    split = digits()
    train = DataLoader(
        NoisyDigits(split.x_train[:640], split.y_train[:640]),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )
    test = DataLoader(NoisyDigits(split.x_test[:200], split.y_test[:200]), batch_size=100)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))

    def progress(step: int) -> None:
        print(f"step {step}", flush=True)

    if mode == "lottery":
        from pathlib import Path

        res = pk.lottery_ticket(
            model,
            train,
            optimizer=lambda p: torch.optim.Adam(p, lr=2e-3),
            val_loader=test,
            rounds=2,
            rate=0.5,
            steps_per_round=40,
            eval_every=10,
            rewind_step=5,
            controls=("reinit",),
            checkpoint_dir=Path(ckpt) if ckpt else None,
        )
        table = json.dumps(res.table.rows, sort_keys=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        cfg = pk.PrunerConfig(
            schedule=pk.CubicSchedule(final_sparsity=0.8, start_step=5, end_step=60, frequency=5),
            regrowth=pk.RegrowthConfig(method="rigl", every=7, drop_fraction=0.3, end_step=100),
        )
        pruner = pk.Pruner(model, cfg, optimizer=opt)
        res_fit = pk.fit(
            model,
            opt,
            train,
            epochs=4,
            pruner=pruner,
            val_loader=test,
            eval_every=20,
            checkpoint=ckpt,
            checkpoint_every=10,
            on_step=progress,
        )
        table = json.dumps(res_fit.history, sort_keys=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    state = {k: (v.to(torch.uint8) if v.dtype == torch.bool else v) for k, v in state.items()}
    save_file(state, out, metadata={"table": table})


if __name__ == "__main__":
    main()
