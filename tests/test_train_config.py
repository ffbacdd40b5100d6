"""Settings declared once: the dataclass, the options derived from it, and config files."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from psconv.cli import build_parser, main
from psconv.commands.train_cmd import config_from_args
from psconv.demo import DEMO
from psconv.run_files import read_metrics
from psconv.train_config import RESUME_KEYS, TrainConfig, read_config_file


def _options(command: str) -> dict[str, str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return {a.dest: a.help or "" for a in sub.choices[command]._actions if a.option_strings}


def test_every_setting_is_an_option_with_its_help_and_default() -> None:
    options = _options("train")
    for f in dataclasses.fields(TrainConfig):
        assert f.name in options, f.name
        assert options[f.name].startswith(f.metadata["help"])
    assert "[0.1]" in options["lr"] and "[150]" in options["epochs"]
    assert set(RESUME_KEYS) >= {"lr", "pattern", "seed", "holdout", "label_smoothing"}
    assert not set(RESUME_KEYS) & {"out", "device", "num_threads"}


def test_demo_options_are_the_same_settings_with_demo_defaults() -> None:
    options = _options("demo")
    assert f"[{DEMO.pattern}]" in options["pattern"] and f"[{DEMO.epochs}]" in options["epochs"]
    assert "dataset" not in options  # the demo is CIFAR-10 only


def _args(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("run.yaml", "model: resnet18\npattern: PS1_P9\nlr: 0.05\nnesterov: true\nlabel-smoothing: 0.1\n"),
        (
            "run.toml",
            'model = "resnet18"\npattern = "PS1_P9"\nlr = 0.05\nnesterov = true\nlabel_smoothing = 0.1\n',
        ),
        (
            "run.json",
            '{"model": "resnet18", "pattern": "PS1_P9", "lr": 0.05, "nesterov": true, "label_smoothing": 0.1}',
        ),
    ],
)
def test_config_file_then_flags(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    config = _args("--config", str(path), "--lr", "0.02", "--no-nesterov")
    assert (config.model, config.pattern, config.label_smoothing) == ("resnet18", "PS1_P9", 0.1)
    assert config.lr == 0.02 and config.nesterov is False  # flags win over the file
    assert config.epochs == TrainConfig().epochs  # and the dataclass fills the rest


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "lrr: 0.1\n", "unknown setting 'lrr'"),
        ("a.yaml", "lr: fast\n", "setting 'lr' must be float, got 'fast'"),
        ("a.yaml", "epochs: 2.5\n", "setting 'epochs' must be int"),
        ("a.yaml", "nesterov: 1\n", "setting 'nesterov' must be bool"),
        ("a.yaml", "lr: [0.1\n", "is not valid YAML (line"),
        ("a.yaml", "- 1\n- 2\n", "must hold a mapping"),
        ("a.toml", "lr = \n", "is not valid TOML"),
        ("a.ini", "lr=0.1\n", "expected a .yaml, .yml, .json or .toml file"),
    ],
)
def test_bad_config_files_are_named(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        read_config_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        read_config_file(tmp_path / "missing.yaml")


def test_train_from_yaml_with_override_and_resolved_config_round_trips(
    cifar_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: vgg16\npattern: PSD1_P16\ndata-dir: {cifar_npz}\nepochs: 2\nbatch_size: 16\n"
        "train_subset: 48\ntest_subset: 32\nlr: 0.05\nschedule: onecycle\nnum_threads: 1\n"
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--lr", "0.02", "--out", str(run)]) == 0
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["lr"] == 0.02 and resolved["schedule"] == "onecycle" and resolved["train_subset"] == 48
    assert [r["lr"] for r in read_metrics(run / "metrics.csv")][0] == pytest.approx(0.002)  # one-cycle start
    # The resolved config is a config file: the same run again, bit for bit.
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--out", str(again)]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(again / "metrics.csv")) == strip(read_metrics(run / "metrics.csv"))
    capsys.readouterr()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("seed", -1, "--seed must be an integer >= 0, got -1"),
        ("momentum", 1.0, "--momentum must be below 1, got 1.0"),
        ("label_smoothing", 1.5, "--label-smoothing must be below 1, got 1.5"),
        ("gamma", 0.0, "--gamma must be above 0"),
        ("lr", float("nan"), "--lr must be a finite number >= 0, got nan"),
        ("weight_decay", -1e-4, "--weight-decay must be a finite number >= 0"),
        ("batch_size", 0, "--batch-size must be a positive integer, got 0"),
        ("holdout", -1, "--holdout must be a positive integer, got -1"),
        ("pattern", "PS5_P4", "pattern 'PS5_P4'"),
        ("model", "vgg17", "unknown model 'vgg17'"),
    ],
)
def test_validate_names_the_setting_before_any_data_is_read(
    setting: str, value: object, message: str
) -> None:
    config = TrainConfig(**{setting: value})
    with pytest.raises(ValueError, match=re.escape(message)):
        config.validate()


def test_validate_accepts_the_defaults_and_boundaries() -> None:
    TrainConfig().validate()
    TrainConfig(seed=0, momentum=0.0, label_smoothing=0.0, weight_decay=0.0, gamma=1.0).validate()
