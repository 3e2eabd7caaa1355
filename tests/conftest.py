"""Shared test settings: deterministic seeds and a small hypothesis budget on 2 CPU cores."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "prunekit",
    max_examples=int(os.environ.get("PRUNEKIT_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("prunekit")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
