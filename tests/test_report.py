import csv
import json
import re
from pathlib import Path

import pytest

from psconv.cli import main
from psconv.report import complexity_rows, read_paper, read_run, read_timings, write_report

PAPER = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-results.csv"


def fake_run(
    root: Path,
    name: str,
    model: str,
    pattern: str,
    accs: list[float],
    finished: bool = True,
    seconds: list[float] | None = None,
    config: dict | None = None,
) -> Path:
    """A run folder in the format psconv train writes (config.json, metrics.csv, summary.json)."""
    folder = root / name
    folder.mkdir()
    if finished:
        (folder / "summary.json").write_text(json.dumps({"final_top1": accs[-1], "epochs": len(accs)}))
    (folder / "config.json").write_text(
        json.dumps({"model": model, "pattern": pattern, "dataset": "cifar10", **(config or {})})
    )
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "seconds"]
        )
        for epoch, acc in enumerate(accs, 1):
            took = seconds[epoch - 1] if seconds else 10.0
            writer.writerow([epoch, 0.1, 1.0, acc - 1, 1.1, acc, 95.0, took])
    return folder


def test_read_run(tmp_path: Path) -> None:
    run = read_run(fake_run(tmp_path, "a", "vgg16", "PSD1_P16", [40.0, 55.5, 50.0]))
    assert run["best_top1"] == 55.5 and run["final_top1"] == 50.0 and run["seconds"] == 30.0


def test_epoch_seconds_is_the_fastest_epoch_of_any_seed(tmp_path: Path) -> None:
    # A paused or disturbed epoch (here 900 s) must not move the time axis.
    runs = [
        fake_run(tmp_path, "s0", "vgg16", "dense", [50.0, 60.0, 61.0], seconds=[120.0, 900.0, 100.0]),
        fake_run(tmp_path, "s1", "vgg16", "dense", [51.0, 62.0, 63.0], seconds=[110.0, 104.0, 400.0]),
    ]
    result = write_report(runs, tmp_path / "out", paper=None)
    (dense,) = result["variants"]
    assert dense["epoch_seconds"] == 100.0  # seed 1's epochs (fastest 104 s) were disturbed more


def test_read_run_refuses_other_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        read_run(tmp_path)


@pytest.mark.parametrize("broken", ["config.json", "summary.json"])
def test_read_run_names_a_corrupt_json_file(tmp_path: Path, broken: str) -> None:
    run = fake_run(tmp_path, "a", "vgg16", "dense", [40.0])
    (run / broken).write_text('{"model": "vgg1')  # cut short, as by a full disk
    with pytest.raises(ValueError, match=re.escape(f"{str(run / broken)!r} is not valid JSON")):
        read_run(run)


def test_read_paper_refuses_a_csv_without_the_paper_columns(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("model,dataset,top1\nvgg16,cifar10,90\n")
    with pytest.raises(ValueError, match="missing variant, params_M, macs_G"):
        read_paper(other)


def test_read_paper_reads_the_reference_table() -> None:
    if not PAPER.is_file():
        pytest.skip(f"{PAPER} not found: the shared reference folder is not beside this clone")
    rows = {(r["model"], r["dataset"], r["variant"]): r for r in read_paper(PAPER)}
    assert (
        rows["vgg16", "cifar10", "pSC9"]["top1"] == 92.78 and rows["vgg16", "cifar10", "pSC9"]["top5"] is None
    )


def test_read_timings_names_a_file_that_is_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "timings.json"
    bad.write_text("model,pattern\nvgg16,dense\n")
    with pytest.raises(ValueError, match=re.escape(f"{str(bad)!r} is not valid JSON")):
        read_timings(bad)


def test_report_writes_tables_and_figures(tmp_path: Path) -> None:
    runs = [
        fake_run(tmp_path, "dense-s0", "vgg16", "dense", [50.0, 60.0]),
        fake_run(tmp_path, "dense-s1", "vgg16", "dense", [51.0, 62.0]),
        fake_run(tmp_path, "psd1-s0", "vgg16", "PSD1_P16", [45.0, 58.0]),
        fake_run(tmp_path, "psd1-s1", "vgg16", "PSD1_P16", [46.0, 57.0]),
        fake_run(tmp_path, "r18", "resnet18", "PSD1_P16", [40.0, 61.0]),
        fake_run(tmp_path, "mbv2", "mobilenetv2", "dense", [41.0, 59.0]),
        fake_run(tmp_path, "unfinished", "vgg16", "PS1_P9", [30.0], finished=False),
    ]
    timings = tmp_path / "t.json"
    timings.write_text(json.dumps([{"model": "vgg16", "pattern": "PSD1_P16", "train_step_b128_ms": 400.0}]))
    out = tmp_path / "out"
    paper = PAPER if PAPER.exists() else None
    result = write_report(runs, out, paper=paper, timings=timings)
    text = (out / "report.md").read_text()
    assert "0.0537" in text and "Horowitz" in text and "final epoch" in text
    variants = {(v["model"], v["pattern"]): v for v in result["variants"]}
    assert ("vgg16", "PS1_P9") not in variants  # an unfinished run is not a result
    psd1 = variants[("vgg16", "PSD1_P16")]
    assert (
        psd1["seeds"] == 2
        and psd1["final_top1"] == 57.5
        and psd1["final_std"] == pytest.approx(0.71, abs=0.01)
    )
    assert psd1["gap_to_dense"] == 57.5 - 61.0
    if paper:
        assert psd1["paper_gap"] == round(89.84 - 92.78, 2)
        assert variants[("mobilenetv2", "dense")]["paper_top1"] == 90.35
    rows = {r["run"]: r for r in csv.DictReader((out / "runs.csv").open())}
    assert float(rows["psd1-s0"]["final_top1"]) == 58.0
    assert float(rows["psd1-s0"]["train_step_b128_ms"]) == 400.0
    pytest.importorskip("matplotlib")
    names = sorted(Path(f).name for f in result["figures"])
    assert names == ["accuracy_vs_macs.png", "accuracy_vs_time.png", "training_curves.png"]
    assert all((out / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_labels_never_overlap() -> None:
    from psconv.report_figures import _spread_labels

    placed = _spread_labels([90.0, 90.1, 90.05, 80.0], gap=1.0)
    ordered = sorted(placed)
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(ordered, ordered[1:]))
    assert abs(sum(placed) - sum([90.0, 90.1, 90.05, 80.0])) < 1e-9  # centred on the points


def test_complexity_rows_cover_both_datasets() -> None:
    rows = complexity_rows(("vgg16",))
    tiny = {r["variant"]: r for r in rows if r["dataset"] == "tinyimagenet"}
    cifar = {r["variant"]: r for r in rows if r["dataset"] == "cifar10"}
    assert len(tiny) == len(cifar) == 13
    # 64x64 input: 4x the conv MACs; classifier 2048x200 instead of 512x10
    assert tiny["PSD1_P16"]["macs"] - 2048 * 200 == 4 * (cifar["PSD1_P16"]["macs"] - 5120)


def test_cli_report_missing_run(tmp_path: Path, capsys) -> None:
    assert main(["report", "--runs", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_cli_energy_override_changes_numbers(capsys) -> None:
    main(["energy", "--model", "resnet18", "--pattern", "PS1_P9", "--json"])
    base = json.loads(capsys.readouterr().out)
    main(["energy", "--model", "resnet18", "--pattern", "PS1_P9", "--json", "--set", "dram_pj=100"])
    cheap = json.loads(capsys.readouterr().out)
    assert cheap["constants"]["dram_pj"] == 100
    assert cheap["formats"]["csr"]["inference_uj"] < base["formats"]["csr"]["inference_uj"]


def test_timings_from_bench_json(tmp_path: Path) -> None:
    from psconv.report import read_timings

    bench = {
        "settings": {"batch": 128},
        "models": [
            {
                "model": "vgg16",
                "dense": {"fwd1": {"ms": 5.0}, "fwd": {"ms": 300.0}, "train": {"ms": 1000.0}},
                "patterns": {"PSD1_P16": {"fwd1": {"ms": 2.0}, "train": {"ms": 400.0}, "ideal": 5.8}},
            }
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    table = read_timings(path)
    assert table[("vgg16", "dense")] == {
        "forward_b1_ms": 5.0,
        "forward_b128_ms": 300.0,
        "train_step_b128_ms": 1000.0,
    }
    assert table[("vgg16", "PSD1_P16")] == {"forward_b1_ms": 2.0, "train_step_b128_ms": 400.0}


def test_bench_epoch_seconds_are_step_times_times_steps_per_epoch(tmp_path: Path) -> None:
    from psconv.report_figures import _time_axis

    runs = [
        fake_run(tmp_path, "d", "vgg16", "dense", [50.0, 60.0], config={"batch_size": 128}),
        fake_run(tmp_path, "h", "vgg16", "PS1_P9", [50.0, 58.0], config={"batch_size": 128, "holdout": 5000}),
        # A subset run's epoch has fewer steps than the bench knows of: no bench time.
        fake_run(
            tmp_path, "s", "vgg16", "PSD1_P16", [40.0, 55.0], config={"batch_size": 128, "train_subset": 5000}
        ),
    ]
    rows = [{"model": "vgg16", "pattern": p, "train_step_b128_ms": ms}
            for p, ms in (("dense", 1000.0), ("PS1_P9", 300.0), ("PSD1_P16", 400.0))]  # fmt: skip
    timings = tmp_path / "steps.json"
    timings.write_text(json.dumps({"rows": rows}))
    variants = write_report(runs, tmp_path / "out", timings=timings)["variants"]
    by_pattern = {v["pattern"]: v["bench_epoch_seconds"] for v in variants}
    # 50,000 CIFAR-10 training images: 390 full batches of 128; 45,000 after a 5,000 holdout: 351.
    assert by_pattern == {"dense": 390.0, "PS1_P9": 105.3, "PSD1_P16": None}
    assert _time_axis(variants)[0] == "epoch_seconds"  # not every variant has a bench time
    assert _time_axis([v for v in variants if v["bench_epoch_seconds"]])[0] == "bench_epoch_seconds"
    assert "s / epoch (bench)" in (tmp_path / "out" / "report.md").read_text()


def test_scatter_labels_stay_inside_the_panel() -> None:
    from psconv.report_figures import _plt, _scatter_panel

    rows = [
        {"label": name, "final_top1": y, "seeds": 1, "macs": x, "paper_macs": None, "paper_top1": None}
        for name, y, x in (
            ("a", 84.0, 0.03),
            ("b", 84.01, 0.05),
            ("c", 84.02, 0.1),
            ("d", 84.03, 0.2),
            ("e", 86.0, 0.3),
        )
    ]
    fig, ax = _plt().subplots()
    _scatter_panel(ax, rows, "macs", "paper_macs")
    low, high = ax.get_ylim()
    label_ys = [text.xyann[1] for text in ax.texts]
    assert len(label_ys) == 5 and all(low < y < high for y in label_ys)
    assert min(label_ys) < 84.0 - 0.1  # the crowded labels reach below the lowest point's margin
    _plt().close(fig)
