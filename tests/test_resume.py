"""A real training subprocess SIGKILLed mid-run resumes from its checkpoint and ends bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import prunekit as pk

WORKER = str(Path(__file__).with_name("resume_worker.py"))


def _run(out: Path, ckpt: Path | str, mode: str = "train") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, WORKER, str(out), str(ckpt), mode],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )


def _run_and_kill(out: Path, ckpt: Path, kill_at: int, mode: str = "train") -> None:
    proc = subprocess.Popen(
        [sys.executable, WORKER, str(out), str(ckpt), mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step ") and int(line.split()[1]) >= kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "the worker finished before it could be killed"
    assert not out.exists()


def _load(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, (fh.metadata() or {})["table"]


def _assert_identical(a: Path, b: Path) -> None:
    ta, ha = _load(a)
    tb, hb = _load(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k  # bit-identical, not allclose
    assert ha == hb


def test_sigkill_twice_then_resume_is_bit_identical(tmp_path: Path) -> None:
    ref = tmp_path / "ref.safetensors"
    _run(ref, "-")  # uninterrupted, no checkpoints at all
    out = tmp_path / "out.safetensors"
    ckpt = tmp_path / "ckpt" / "run.safetensors"
    _run_and_kill(out, ckpt, kill_at=27)  # mid-epoch (20 batches per epoch), between checkpoints
    first = pk.training.checkpoint.read_checkpoint(ckpt)[1]["position"]
    assert 0 < first["step"] < 80 and not first["done"]
    _run_and_kill(out, ckpt, kill_at=first["step"] + 33)
    second = pk.training.checkpoint.read_checkpoint(ckpt)[1]["position"]
    assert second["step"] > first["step"]
    done = _run(out, ckpt)
    steps = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("step ")]
    assert steps[0] == second["step"] + 1  # it resumed, it did not start over
    assert not list(ckpt.parent.glob("*.tmp"))  # no temporary files left behind
    _assert_identical(ref, out)


@pytest.mark.slow
def test_lottery_killed_mid_level_resumes_identically(tmp_path: Path) -> None:
    ref = tmp_path / "ref.safetensors"
    _run(ref, "-", "lottery")
    out = tmp_path / "out.safetensors"
    ckdir = tmp_path / "lt"
    proc = subprocess.Popen(
        [sys.executable, WORKER, str(out), str(ckdir), "lottery"], stdout=subprocess.DEVNULL
    )
    # the lottery worker prints nothing per step: kill once level 1's ticket checkpoint exists
    import time

    deadline = time.time() + 300
    while time.time() < deadline and not (ckdir / "level-01-ticket.safetensors").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _run(out, ckdir, "lottery")
    _assert_identical(ref, out)


def test_checkpoint_round_trip_restores_masks_optimizer_and_rngs(tmp_path: Path) -> None:
    import random

    import numpy as np
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    pk.prune_weights(model, 0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    path = tmp_path / "c.safetensors"
    pk.save_checkpoint(path, model=model, optimizer=opt, position={"step": 3}, generators=[gen])
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))

    fresh = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))  # no masks yet
    opt2 = torch.optim.Adam(fresh.parameters(), lr=0.01)
    gen2 = torch.Generator()
    ck = pk.load_checkpoint(path, model=fresh, optimizer=opt2, generators=[gen2])
    assert ck.position == {"step": 3}
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen2))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert torch.equal(got[3], expected[3])
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert fresh[0].weight_mask.dtype == torch.bool
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    for i in s1:
        for key in s1[i]:
            assert torch.equal(torch.as_tensor(s1[i][key]), torch.as_tensor(s2[i][key]))
    # pruned weights stay zero after the restored optimizer steps
    fresh(torch.randn(3, 6)).sum().backward()
    opt2.step()
    assert bool((fresh[0].weight[~fresh[0].weight_mask] == 0).all())


def test_bad_checkpoint_files_raise_format_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from torch import nn

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(pk.FormatError):
        pk.load_checkpoint(junk, model=nn.Linear(2, 2))
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(pk.FormatError, match="not a prunekit checkpoint"):
        pk.load_checkpoint(other, model=nn.Linear(2, 2))
    good = tmp_path / "good.safetensors"
    pk.save_checkpoint(good, model=nn.Linear(2, 2))
    with pytest.raises(pk.FormatError, match="does not fit"):
        pk.load_checkpoint(good, model=nn.Linear(3, 2))
