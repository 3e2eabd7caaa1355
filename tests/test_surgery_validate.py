"""surgery.validate: every malformed kept-index list is refused, naming the right tensor (property test
against a per-entry oracle), and the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit.errors import PlanError
from prunekit.structured.surgery import Plan, PlanEntry, apply, validate

SIZES = (5, 7, 3, 6)


def _model() -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(4, n) for n in SIZES])


def _ok(kept: list[int], size: int) -> bool:
    return all(0 <= k < size for k in kept) and all(a < b for a, b in zip(kept, kept[1:], strict=False))


kept_lists = st.lists(st.integers(min_value=-2, max_value=8), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(kept_lists, min_size=len(SIZES), max_size=len(SIZES)))
def test_validate_refuses_exactly_the_first_bad_entry(kepts: list[list[int]]) -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    entries = tuple(
        PlanEntry(fqn=f"{i}.weight", dim=0, size=n, kept=tuple(k))
        for i, (n, k) in enumerate(zip(SIZES, kepts, strict=True))
    )
    bad = [e for e in entries if not _ok(list(e.kept), e.size)]
    if not bad:
        validate(model, Plan(entries=entries))
        return
    with pytest.raises(
        PlanError, match=rf"'{bad[0].fqn}' dim 0 must be sorted, unique and in \[0, {bad[0].size}\)"
    ):
        apply(model, Plan(entries=entries))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_validate_accepts_single_and_full_entries() -> None:
    model = _model()
    entries = (
        PlanEntry(fqn="0.weight", dim=0, size=5, kept=(4,)),
        PlanEntry(fqn="1.weight", dim=0, size=7, kept=tuple(range(7))),
        PlanEntry(fqn="2.weight", dim=1, size=4, kept=(0, 3)),
    )
    validate(model, Plan(entries=entries))
    apply(model, Plan(entries=entries))
    assert [tuple(model[i].weight.shape) for i in range(3)] == [(1, 4), (7, 4), (3, 2)]
