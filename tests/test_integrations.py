"""Integrations, each with the real library: a Lightning Callback and a Hugging Face Trainer callback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit as pk
from prunekit.core.masks import masked_parameters


def _assert_follows(history: list[tuple[int, float, float]], schedule: pk.Schedule, n: int) -> None:
    assert [h[0] for h in history] == list(range(1, len(history) + 1))
    for step, target, achieved in history:
        assert target == schedule.sparsity(step - 1)
        assert abs(achieved * n - int(target * n + 0.5)) <= 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning: advice about dataloader workers
@pytest.mark.filterwarnings("ignore::FutureWarning")  # Lightning on torch 2.13: pytree LeafSpec deprecation
def test_lightning_callback_prunes_on_schedule(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch", reason="the `lightning` extra is not installed")

    from prunekit.integrations.lightning import PrunerCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(96, 8), torch.randint(0, 3, (96,))), batch_size=8)
    sched = pk.CubicSchedule(final_sparsity=0.7, start_step=2, end_step=10, frequency=2)
    cfg = pk.PrunerConfig(
        schedule=sched, regrowth=pk.RegrowthConfig(method="rigl", every=3, drop_fraction=0.3, end_step=14)
    )
    cb = PrunerCallback(cfg)
    module = Lit()
    trainer = pl.Trainer(
        max_steps=8,
        accumulate_grad_batches=2,  # 16 batches, 8 optimizer steps: one pruner step per optimizer step
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[cb],
    )
    trainer.fit(module, data)
    assert len(cb.history) == 8
    n = 8 * 32 + 32 * 3
    _assert_follows(cb.history, sched, n)
    assert cb.pruner is not None and cb.pruner.last_regrowth  # RigL ran inside Lightning (gradients seen)
    for mp in masked_parameters(module):
        assert bool((mp.param[~mp.mask] == 0).all())
    assert cb.state_dict()["step"] == 8


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hf_trainer_callback_prunes_a_bert_on_schedule(tmp_path: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (the `hf` extra)")

    from prunekit.integrations.hf_trainer import PrunerTrainerCallback

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": torch.randint(0, 50, (6,), generator=g), "labels": torch.tensor(i % 2)}
        for i in range(48)
    ]
    sched = pk.CubicSchedule(final_sparsity=0.5, start_step=0, end_step=4, frequency=2)
    cfg = pk.PrunerConfig(schedule=sched, scope="layer", include=("*.intermediate.dense", "*.output.dense"))
    cb = PrunerTrainerCallback(cfg)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=8,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[cb])
    trainer.train()
    masked = {mp.fqn for mp in masked_parameters(model)}
    assert masked == {
        "bert.encoder.layer.0.intermediate.dense.weight",
        "bert.encoder.layer.0.output.dense.weight",
        "bert.encoder.layer.0.attention.output.dense.weight",
    }
    n = 16 * 32 * 2 + 16 * 16
    assert len(cb.history) == 6
    for step, target, achieved in cb.history:
        assert target == sched.sparsity(step - 1)
        assert abs(achieved * n - (32 * 16 * 2 + 16 * 16) * target) <= 3  # per-layer rounding
    assert pk.sparsity(model) > 0.0


def test_integrations_are_not_imported_by_prunekit() -> None:
    code = "import sys, prunekit; print('prunekit.integrations.lightning' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False False"
