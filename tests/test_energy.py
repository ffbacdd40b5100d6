import re

import pytest

import psconv
from psconv.energy import EnergyConstants, energy_estimate, parse_overrides, storage_bits


@pytest.fixture(scope="module")
def vgg_psd1() -> dict:
    return psconv.profile(psconv.create_model("vgg16", "PSD1_P16"), file_size=False)


def test_storage_formats_are_exact(vgg_psd1) -> None:
    bits = storage_bits(vgg_psd1, EnergyConstants())
    sparse_kernels = sum(
        layer["output_shape"][1] * layer["input_shape"][1]
        for layer in vgg_psd1["layers"]
        if layer["pattern"] != "dense"
    )
    assert bits["index_free"] == 32 * vgg_psd1["params"]
    assert bits["bitmask"] == bits["index_free"] + 9 * sparse_kernels
    assert bits["csr"] > bits["bitmask"] > bits["index_free"]
    assert bits["dense"] == 32 * vgg_psd1["dense_params"]


def test_estimate_follows_constants(vgg_psd1) -> None:
    base = energy_estimate(vgg_psd1)
    cheap_dram = energy_estimate(vgg_psd1, parse_overrides(["dram_pj=320"]))
    no_mac = energy_estimate(vgg_psd1, parse_overrides(["mac_pj=0.000001"]))
    fmt, half = base["formats"]["index_free"], cheap_dram["formats"]["index_free"]
    mac_part = vgg_psd1["macs"] * 4.6e-6
    assert half["inference_uj"] == pytest.approx(mac_part + (fmt["inference_uj"] - mac_part) / 2)
    assert no_mac["formats"]["index_free"]["inference_uj"] == pytest.approx(
        fmt["inference_uj"] - mac_part, rel=1e-6
    )
    assert base["sources"]["dram_pj"].startswith("32-bit DRAM read")
    assert base["formats"]["index_free"]["inference_uj"] < base["formats"]["csr"]["inference_uj"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("dram_pj", "must be NAME=VALUE"),
        ("nope=3", "must be NAME=VALUE"),
        ("batch=x", "must be NAME=VALUE"),
        ("mac_pj=abc", "mac_pj needs a number, got 'abc'"),
        ("word_bits=2.5", "word_bits needs a number, got '2.5'"),
        ("dram_pj=-1", "dram_pj must be a finite number above 0, got '-1'"),
        ("infer_batch=0", "infer_batch must be a finite number above 0, got '0'"),
        ("mac_pj=nan", "mac_pj must be a finite number above 0, got 'nan'"),
        ("dram_pj=inf", "dram_pj must be a finite number above 0, got 'inf'"),
    ],
)
def test_bad_overrides(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_overrides([item])
