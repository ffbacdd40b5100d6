import pytest
import torch

import psconv
from psconv import PSConv2d
from psconv.patterns import PAPER_PATTERNS


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
@pytest.mark.parametrize("image_size", [32, 64])
def test_models_build_and_run(name: str, image_size: int) -> None:
    model = psconv.create_model(name, "PSD2_P8", num_classes=7, image_size=image_size)
    out = model(torch.randn(2, 3, image_size, image_size))
    assert out.shape == (2, 7)
    dense = psconv.create_model(name, "dense", num_classes=7, image_size=image_size)
    three = [m for m in dense.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    sparse = [m for m in model.modules() if isinstance(m, PSConv2d)]
    left = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # every 3x3 conv but the stem is sparse; the stem and 1x1 shortcuts stay dense
    assert len(sparse) == len(three) - 1
    assert all(c.kernel_size == (1, 1) or c.in_channels == 3 for c in left)
    assert model.psconv_config == {
        "name": name,
        "pattern": "PSD2_P8",
        "num_classes": 7,
        "image_size": image_size,
        "seed": 0,
    }


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg99'.*resnet18.*vgg16"):
        psconv.create_model("vgg99")


def test_list_models_has_paper_nets() -> None:
    assert {"vgg16", "resnet18"} <= set(psconv.list_models())


def test_bad_image_size_is_refused() -> None:
    with pytest.raises(ValueError, match="image_size"):
        psconv.create_model("vgg16", image_size=40)


def test_paper_init() -> None:
    model = psconv.create_model("vgg16", "dense")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all((bn.weight == 0.5).all() for bn in bns)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_every_paper_pattern_builds() -> None:
    for pattern in PAPER_PATTERNS:
        model = psconv.create_model("resnet18", pattern)
        assert model.psconv_config["pattern"] == psconv.parse_pattern(pattern).name
