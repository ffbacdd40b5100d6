import csv
from pathlib import Path

import pytest
import torch

import psconv

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-results.csv"


def paper_rows() -> list[dict[str, str]]:
    if not REFERENCE.exists():
        return []
    with REFERENCE.open() as handle:
        return [r for r in csv.DictReader(handle) if r["dataset"] == "cifar10"]


ROWS = paper_rows()


@pytest.mark.skipif(not ROWS, reason=f"paper table not found at {REFERENCE}")
@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['model']}-{r['variant']}")
def test_profile_reproduces_paper_table(row: dict[str, str]) -> None:
    model = psconv.create_model(row["model"], row["variant"])
    result = psconv.profile(model, (1, 3, 32, 32), file_size=False)
    assert f"{result['params'] / 1e6:.3f}" == row["params_M"]
    assert f"{result['macs'] / 1e9:.4f}" == row["macs_G"]


def test_profile_counts_exactly_on_a_small_net() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.Conv2d(4, 8, 3, padding=1, bias=False),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 5 * 5, 2),
    )
    psconv.sparsify(net, "PS1_P9")
    result = psconv.profile(net, (3, 5, 5))
    # conv1 dense 108 weights, conv2 one tap per kernel (32), linear 400 weights
    assert result["macs"] == 108 * 25 + 32 * 25 + 400
    assert result["dense_macs"] == 108 * 25 + 288 * 25 + 400
    assert result["params"] == 112 + 32 + 402
    assert result["dense_params"] == 112 + 288 + 402
    assert [layer["pattern"] for layer in result["layers"]] == ["dense", "PS1_P9", "dense"]
    assert result["checkpoint_bytes"] == len(psconv.checkpoint.serialize(net))


def test_tinyimagenet_counts_scale_with_input() -> None:
    small = psconv.profile(psconv.create_model("vgg16", "PSD1_P16"), file_size=False)
    big = psconv.profile(
        psconv.create_model("vgg16", "PSD1_P16", num_classes=200, image_size=64),
        (1, 3, 64, 64),
        file_size=False,
    )
    conv_small = small["macs"] - 512 * 10
    conv_big = big["macs"] - 512 * 4 * 200
    assert conv_big == 4 * conv_small


def test_bad_input_size() -> None:
    with pytest.raises(ValueError, match="input_size"):
        psconv.profile(psconv.create_model("vgg16"), (32, 32))


def test_profile_builds_no_kernel_plan(monkeypatch: pytest.MonkeyPatch, keep_backend: None) -> None:
    """Counting needs shapes only: no plan building and no autotune timing, whatever the backend."""
    from psconv.kernels import dispatch

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("profile asked the fast path for a decision")

    monkeypatch.setattr(dispatch, "_backend_wants", refuse)
    psconv.kernels.set_backend("auto")
    model = psconv.create_model("resnet18", "PSD2_P8", num_classes=10)
    assert psconv.profile(model, (1, 3, 32, 32))["macs"] > 0
    assert psconv.kernels.get_backend() == "auto"
