"""Smoke tests of ``psconv bench`` (tiny settings: they check structure, not speed)."""

from __future__ import annotations

import json

import pytest
import torch

from psconv import bench, kernels


def test_bench_model_structure(monkeypatch):
    # 'fast', not 'auto': on CPUs where 'auto' measures, oneDNN may win every layer at batch 2.
    monkeypatch.setattr(bench, "_SAMPLE_SCALE", 0.01)
    monkeypatch.setattr(bench, "_SPARSE_BACKEND", "fast")
    res = bench.bench_model(
        "vgg16", ["PS4_P4"], batch=2, repeats=1, cases=["train"], layers=True, memory=False
    )
    pat = res["patterns"]["PS4_P4"]
    assert 2.0 < pat["ideal"] < 2.3
    for case in ("train",):
        assert res["dense"][case]["ms"] > 0
        assert pat[case]["speedup"] > 0 and pat[case]["masked_ms"] > 0
    rows = pat["layers"]
    assert {r["case"] for r in rows} == {"train"}
    assert all(r["ideal"] > 1 for r in rows)
    expected = "fast" if kernels.kernels_available() else "reference"
    assert any(r["kernel"] == expected for r in rows)
    # PS4_P4 (period 4 divides the 16 lanes) keeps the diagonal packing on every layer.
    assert {r["packing"] for r in rows} == ({"diagonal"} if expected == "fast" else {None})
    assert "vgg16" in bench.format_report(
        {
            "machine": {"torch": "x", "threads": 1, "kernels": "k"},
            "settings": {"batch": 2, "repeats": 1},
            "models": [res],
        }
    )


def test_bench_cli_quick_json(capsys, tmp_path):
    cli = pytest.importorskip("psconv.cli")
    out = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--models", "resnet18", "--patterns", "PS1_P9", "--cases", "fwd1"]
    argv += ["--json", "--output", str(out)]
    parser = cli.build_parser()
    args = parser.parse_args(argv) if "bench" in parser._subparsers._group_actions[0].choices else None
    if args is None:
        from psconv.bench import main

        assert main(argv[1:]) == 0
    else:
        assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    res = report["models"][0]
    assert res["model"] == "resnet18" and res["patterns"]["PS1_P9"]["fwd1"]["speedup"] > 0


def test_bench_without_patterns_times_the_dense_model_alone(capsys):
    from psconv.cli import main

    argv = ["bench", "--quick", "--models", "shufflenet", "--patterns", "--cases", "fwd1", "--json"]
    assert main(argv) == 0
    (res,) = json.loads(capsys.readouterr().out)["models"]
    assert res["model"] == "shufflenet" and res["patterns"] == {}
    assert res["dense"]["fwd1"]["ms"] > 0


def test_peak_memory_probe():
    mem = bench._peak_memory("vgg16", "PS4_P4", "psconv", 2, 32, 1)
    assert mem["peak_rss_mib"] > 50 and mem["step_mib"] >= 0


def test_deploy_rows_keep_every_anchor(tmp_path, capsys):
    from psconv.cli import main

    out = tmp_path / "deploy.json"
    argv = ["bench", "--deploy", "--quick", "--models", "vgg16", "--patterns", "PSD1_P16"]
    assert main([*argv, "--deploy-batches", "1", "2", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["deploy"]
    assert [r["batch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["ours_ms"] > 0 and row["eager_dense_ms"] > 0 and row["compiled_dense_ms"] > 0
        assert row["ort_dense_ms"] > 0 and row["speedup_vs_ort"] == pytest.approx(
            row["ort_dense_ms"] / row["ours_ms"], rel=1e-2
        )
    assert "ORT dense" in capsys.readouterr().out


@pytest.mark.parametrize("train", [False, True])
def test_layer_label_asks_about_the_call_that_was_timed(monkeypatch, train):
    """'auto' decides forward and training calls of a shape apart: the row's kernel label must
    be asked under the timed call's gradient mode and backend."""
    from psconv.layers import PSConv2d

    seen = []

    def spy(layer, x):
        seen.append((torch.is_grad_enabled(), x.requires_grad, kernels.get_backend(), tuple(x.shape)))
        return True

    monkeypatch.setattr(kernels, "uses_fast", spy)
    assert bench._runs_fast(PSConv2d(8, 8, pattern="PS4_P4"), (1, 8, 6, 6), train=train)
    assert seen == [(train, train, bench._SPARSE_BACKEND, (1, 8, 6, 6))]
