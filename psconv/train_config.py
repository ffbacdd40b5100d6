"""Every training setting, declared once: :class:`TrainConfig`, with type, default and help.

The ``psconv train`` options, the ``--config`` file reader and the demo are all derived from
the dataclass fields. A config file is YAML (``.yaml``/``.yml``, and so JSON, which is YAML) or
TOML (``.toml``), a flat mapping of field names (dashes or underscores) to values; the
resolved ``config.json`` a run writes is accepted back as ``--config``. Precedence: defaults,
then the file, then command-line flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from .data import DATASETS
from .models import list_models
from .patterns import parse_pattern

__all__ = [
    "TrainConfig",
    "SCHEDULES",
    "AMP_MODES",
    "PAPER_EPOCHS",
    "RESUME_KEYS",
    "config_fields",
    "read_config_file",
    "coerce",
]

PAPER_EPOCHS = 150
SCHEDULES = ("paper", "cosine", "onecycle")
AMP_MODES = ("none", "bf16", "fp16")


def setting(
    default: Any, help: str, *, computes: bool = False, choices: Any = None, flag: bool = True
) -> Any:
    """A field with its help text. ``computes``: it changes what a run computes, so a resumed
    run must agree on it. ``flag=False``: not a command-line option (set in files or code)."""
    meta = {"help": help, "computes": computes, "choices": choices, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """One training run. Defaults: the authors' CIFAR-10 recipe (reference README)."""

    model: str = setting("vgg16", "registered model name", computes=True, choices=list_models)
    pattern: str = setting("dense", "kernel pattern spec, e.g. PSD1_P16", computes=True)
    dataset: str = setting("cifar10", "data set", computes=True, choices=lambda: sorted(DATASETS))
    data_dir: str | None = setting(None, "data directory or archive [$PSCONV_DATA]")
    download: bool = setting(False, "fetch the official archive if the data is missing")
    epochs: int = setting(PAPER_EPOCHS, "epochs", computes=True)
    batch_size: int = setting(128, "global batch size (split evenly over DDP ranks)", computes=True)
    lr: float = setting(0.1, "peak learning rate", computes=True)
    momentum: float = setting(0.9, "SGD momentum", computes=True)
    weight_decay: float = setting(5e-4, "weight decay on all parameters", computes=True)
    nesterov: bool = setting(False, "Nesterov momentum", computes=True)
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy", computes=True)
    schedule: str = setting("paper", "learning-rate schedule", computes=True, choices=SCHEDULES)
    gamma: float = setting(0.2, "the paper schedule's factor per milestone", computes=True)
    seed: int = setting(0, "seed of the initialisation, masks, shuffling and augmentation", computes=True)
    device: str = setting("auto", "auto, cpu, cuda, cuda:N")
    out: str | None = setting(None, "run folder [runs/<model>-<pattern>-<dataset>-s<seed>]")
    train_subset: int | None = setting(
        None, "train on N images (a fixed, seed-independent draw)", computes=True
    )
    test_subset: int | None = setting(None, "evaluate on N test images (a fixed draw)")
    holdout: int | None = setting(
        None, "validate on N held-out training images instead of the test set", computes=True
    )
    eval_every: int = setting(1, "evaluate every K epochs (and after the last)")
    eval_batch_size: int = setting(500, "evaluation batch size")
    compile: bool = setting(False, "torch.compile the model")
    amp: str = setting("none", "mixed precision", choices=AMP_MODES)
    channels_last: bool = setting(False, "channels-last memory format")
    num_threads: int | None = setting(None, "CPU threads [torch's default]")
    kernel_choices: str | None = setting(
        None,
        "a run's kernel_choices.json: each layer takes the path (kernel or oneDNN) that run took "
        "instead of measuring, so a repeat on the same kind of CPU matches it bit for bit",
    )

    def validate(self) -> None:
        if self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(list_models())}")
        parse_pattern(self.pattern)  # a bad spec fails now, not after loading the data
        for f in config_fields():
            choices = f.metadata["choices"]
            allowed = choices() if callable(choices) else choices
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(
                    f"--{_flag(f.name)} must be one of {', '.join(allowed)}, got {getattr(self, f.name)!r}"
                )
        positive = ["epochs", "batch_size", "eval_every", "eval_batch_size"]
        positive += [
            n
            for n in ("train_subset", "test_subset", "holdout", "num_threads")
            if getattr(self, n) is not None
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "gamma", "label_smoothing"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"--{_flag(name)} must be a finite number >= 0, got {value!r}")
        # Each of these would otherwise fail late (a negative seed only when the first epoch
        # draws its crops) or train a run that cannot learn (momentum >= 1 never forgets).
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed!r}")
        for name in ("momentum", "label_smoothing"):
            if getattr(self, name) >= 1:
                raise ValueError(f"--{_flag(name)} must be below 1, got {getattr(self, name)!r}")
        if self.gamma == 0:
            raise ValueError("--gamma must be above 0 (0 would stop training at the first milestone), got 0")

    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.model}-{self.pattern}-{self.dataset}-s{self.seed}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


RESUME_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("computes")
)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def field_type(f: dataclasses.Field) -> tuple[type, bool]:
    """(the field's value type, whether it may be None)."""
    hint = get_type_hints(TrainConfig)[f.name]
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def coerce(name: str, value: Any, where: str) -> Any:
    """``value`` for field ``name`` as its declared type; a clear error naming ``where``."""
    fields = {f.name: f for f in config_fields()}
    if name not in fields:
        known = ", ".join(sorted(fields))
        raise ValueError(f"{where}: unknown setting {name!r}; known settings: {known}")
    kind, optional = field_type(fields[name])
    if value is None and optional:
        return None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]
    if not ok:
        raise ValueError(f"{where}: setting {name!r} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's settings (checked against :class:`TrainConfig`'s fields and types)."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"--config {where!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--config {where!r} cannot be read: {exc}") from None
    if path.suffix.lower() == ".toml":
        data = _parse_toml(text, where)
    elif path.suffix.lower() in (".yaml", ".yml", ".json"):
        data = _parse_yaml(text, where)
    else:
        raise ValueError(f"--config {where!r}: expected a .yaml, .yml, .json or .toml file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {where!r} must hold a mapping of settings, got {type(data).__name__}")
    return {k.replace("-", "_"): coerce(k.replace("-", "_"), v, where) for k, v in data.items()}


def _parse_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"--config {where!r} is not valid YAML{at}") from None


def _parse_toml(text: str, where: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {where!r} is not valid TOML ({exc})") from None
