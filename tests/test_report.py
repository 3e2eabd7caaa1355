"""Reports: report.json holds every number; report.html is self-contained and renders in headless Chromium.

The browser tests open the real file in Chromium (Debian packages chromium + chromium-driver) and check
that the page loads without errors and that every plot is a decoded image (naturalWidth > 0). One test
breaks an image on purpose and checks that the same check fails, so the check can fail.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
import torch
from tests.report_browser import Browser, chromium_binaries
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError, FormatError
from prunekit.recipes.schema import Recipe
from prunekit.report.html import (
    atomic_dir,
    demo_report,
    envelope,
    load_report,
    make_plots,
    prune_report,
    render_html,
    sensitivity_curves,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"


def _data() -> tuple[DataLoader, DataLoader]:
    from prunekit.core.datasets import digits

    split = digits(seed=0)
    train = DataLoader(TensorDataset(split.x_train[:256], split.y_train[:256]), batch_size=64)
    test = DataLoader(TensorDataset(split.x_test[:128], split.y_test[:128]), batch_size=128)
    return train, test


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def prune_rep() -> dict:
    recipe = Recipe.from_dict(
        {
            "name": "report-test",
            "data": {"source": "digits"},
            "prune": [{"what": "weights", "sparsity": 0.8}],
            "schedule": {"kind": "iterative", "rounds": 2},
            "finetune": {"epochs": 0.5, "lr": 0.01},
            "measure": {"latency_repeats": 3},
        }
    )
    result = recipe.run(_mlp(), torch.zeros(1, 1, 8, 8), data=_data())
    return prune_report(result, model_source={"spec": "test"})


@pytest.fixture(scope="module")
def sens_rep() -> dict:
    import prunekit as pk

    model = _mlp()
    _, test = _data()

    def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
        return float((out.argmax(-1) == y).float().mean())

    res = pk.sensitivity(
        model, test, nn.functional.cross_entropy, ratios=(0.25, 0.5, 0.75), metric=accuracy, progress=False
    )
    return envelope("analyze", "sensitivity test", sensitivity=res.to_dict())


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if chromium_binaries() is None:
        if os.environ.get("CI"):  # CI installs chromium (.ci/run): a missing browser there is a failure
            pytest.fail(
                "chromium/chromedriver missing in CI: .ci/run must apt-get install chromium chromium-driver"
            )
        pytest.skip(
            "chromium/chromedriver not installed here (CI installs: apt-get install -y chromium chromium-driver)"
        )
    b = Browser()
    yield b
    b.close()


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def test_report_json_has_every_number(prune_rep: dict, tmp_path: Path) -> None:
    html_path, json_path = write_report(prune_rep, tmp_path)
    data = load_report(tmp_path)
    assert data == json.loads(json_path.read_text())
    assert data["kind"] == "prune" and data["prunekit_report"] == 1
    before, after = data["before"], data["after"]
    assert before["params"] == after["params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert before["sparsity"] == 0.0 and after["sparsity"] == pytest.approx(0.8, abs=0.01)
    # non-zeros: 80% of the 2,368 weights are gone, biases stay
    assert after["nonzeros"] <= before["nonzeros"] - int(0.8 * (64 * 32 + 32 * 10)) + 1
    assert after["file_bytes"] < before["file_bytes"]
    assert before["latency"]["repeats"] == 3 and before["latency"]["hardware"]["torch"] == torch.__version__
    assert [h["stage"] for h in data["history"]] == ["dense", "pruned", "finetuned", "pruned", "finetuned"]
    assert data["history"][1]["sparsity"] == pytest.approx(
        0.4, abs=0.01
    )  # iterative: half the way in round 1
    assert {r["name"] for r in data["layers"]} == {"1", "3"}
    assert html_path.stat().st_size > 5000


def test_html_is_self_contained_with_valid_pngs(prune_rep: dict) -> None:
    html = render_html(prune_rep)
    assert not re.search(r"""(src|href)=['"](https?:|//)""", html)  # nothing loaded from outside
    pngs = _pngs(html)
    assert len(pngs) == 3  # per-layer sparsity, per-layer width, accuracy vs sparsity
    assert all(p.startswith(PNG_MAGIC) and p.endswith(PNG_END) and len(p) > 1000 for p in pngs)  # whole PNGs
    assert "Before and after" in html and "report-test" in html


def test_sensitivity_curves_from_result(sens_rep: dict) -> None:
    curves = sensitivity_curves(sens_rep["sensitivity"])
    assert set(curves) == {"1", "3"}
    base = sens_rep["sensitivity"]["baseline_loss"]
    for name, (ratios, deltas) in curves.items():
        layer = next(la for la in sens_rep["sensitivity"]["layers"] if la["name"] == name)
        assert ratios == [0.25, 0.5, 0.75]
        assert deltas == pytest.approx([v - base for v in layer["loss"]])
    metric = sensitivity_curves(sens_rep["sensitivity"], "metric")
    assert {n: v for n, (_, v) in metric.items()} == {
        la["name"]: la["metric"] for la in sens_rep["sensitivity"]["layers"]
    }
    assert list(make_plots(sens_rep)) == ["Sensitivity curves", "Metric vs ratio per layer"]


def test_demo_report_has_accuracy_plot() -> None:
    from prunekit.cli.demo import DemoConfig, run_demo

    res = run_demo(
        DemoConfig(
            sparsities=(0.5, 0.9),
            criteria=("magnitude",),
            channel_ratios=(),
            epochs=2,
            finetune_epochs=1,
            latency_repeats=2,
        )
    )
    rep = demo_report(res)
    assert "Accuracy vs sparsity" in make_plots(rep)
    assert len(rep["demo"]) == 3


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "report.json").write_text("{}")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(ConfigError, match="already exists"):
        with atomic_dir(target):
            pass


def test_load_report_rejects_other_json(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text('{"hello": 1}')
    with pytest.raises(FormatError, match="not a prunekit report"):
        load_report(tmp_path)


def test_report_renders_in_chromium_with_all_plots(browser, prune_rep: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    html_path, _ = write_report(prune_rep, tmp_path)
    page = browser.check(html_path)
    assert page.severe == [] and page.js_errors == []
    assert len(page.images) == 3
    assert page.broken_images == []
    assert all(i["width"] > 100 and i["height"] > 100 for i in page.images)
    assert {i["alt"] for i in page.images} == {  # a weight-only run: no width plot
        "Per-layer weight sparsity",
        "Accuracy vs sparsity",
        "Latency vs size per model state",
    }
    assert "Model states" in page.text and "Horowitz 2014" in page.text
    assert "pk.make_permanent removes them" in page.text
    assert "Before and after" in page.text and "report-test" in page.title
    assert page.ok


def test_sensitivity_report_renders_in_chromium(browser, sens_rep: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    html_path, _ = write_report(sens_rep, tmp_path)
    page = browser.check(html_path)
    assert page.ok, (page.severe, page.js_errors, page.broken_images)
    assert [i["alt"] for i in page.images] == ["Sensitivity curves", "Metric vs ratio per layer"]


def test_chromium_check_fails_when_an_image_is_missing(browser, prune_rep: dict, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The check must be able to fail: a damaged and a missing plot are both reported as broken."""
    html = render_html(prune_rep)
    first = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert first is not None
    garbage = base64.b64encode(b"this is not a PNG image" * 4).decode()
    damaged = html.replace(first.group(1), garbage, 1)  # undecodable image data
    path = tmp_path / "damaged.html"
    path.write_text(damaged)
    page = browser.check(path)
    assert len(page.broken_images) == 1 and not page.ok
    missing = html.replace(first.group(0), "missing-plot.png", 1)  # a file that is not there
    path = tmp_path / "missing.html"
    path.write_text(missing)
    page = browser.check(path)
    assert len(page.broken_images) == 1 and not page.ok
