"""A first-order energy model: MACs and DRAM traffic, with every constant named and sourced.

The paper's claim is that periodic supports need no index, so parameter savings become fewer
DRAM accesses. We compare three ways to store the same sparse weights:

- ``index_free`` (psconv): only the kept values; the mask is a function of the spec.
- ``bitmask``: the kept values plus one bit per kernel position of every sparse kernel.
- ``csr``: the kept values plus a column index per value and a row pointer per filter.

Model (per image, fp32, no on-chip reuse across layers; a deliberately simple upper bound):

- inference: ``macs * mac_pj`` + DRAM words ``* dram_pj``, where the words are the weight
  storage (read once per batch, amortised over ``infer_batch``, 1 by default) plus every conv/linear layer's
  input read and output written once;
- training step: 3x the MACs (forward, grad-input, grad-weight); weights read twice and
  gradients written once; SGD with momentum reads weight, gradient and momentum and writes
  weight and momentum (all amortised over ``train_batch``); activations written in forward and
  read twice in backward, output gradients written and read once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["EnergyConstants", "SOURCES", "energy_estimate", "storage_bits", "parse_overrides"]


@dataclass(frozen=True)
class EnergyConstants:
    mac_pj: float = 4.6
    dram_pj: float = 640.0
    word_bits: int = 32
    csr_index_bits: int = 16
    csr_rowptr_bits: int = 32
    infer_batch: int = 1
    train_batch: int = 128


SOURCES: dict[str, str] = {
    "mac_pj": "32-bit float multiply (3.7 pJ) + add (0.9 pJ), 45 nm: M. Horowitz, "
    "'Computing's energy problem', ISSCC 2014",
    "dram_pj": "32-bit DRAM read, 45 nm: M. Horowitz, ISSCC 2014 (about 640 pJ)",
    "word_bits": "fp32 weights and activations, as trained",
    "csr_index_bits": "column index of a CSR value: 16 bits covers in_channels*9 <= 65536",
    "csr_rowptr_bits": "CSR row pointer per filter: 32 bits",
    "infer_batch": "inference batch: weights are fetched once per batch (1: edge inference)",
    "train_batch": "training batch: weights, gradients and optimizer state move once per batch",
}


def parse_overrides(items: list[str] | None) -> EnergyConstants:
    """``["dram_pj=320", "batch=1"]`` -> constants with those values replaced."""
    constants = EnergyConstants()
    names = {f.name: f.type for f in fields(EnergyConstants)}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise ValueError(f"energy constant must be NAME=VALUE with NAME in {sorted(names)}, got {item!r}")
        try:
            number = float(value) if names[key] in ("float", float) else int(value)
        except ValueError:
            raise ValueError(f"energy constant {key} needs a number, got {value!r}") from None
        if not math.isfinite(number) or number <= 0:  # nan and inf pass float() but poison every total
            raise ValueError(f"energy constant {key} must be a finite number above 0, got {value!r}")
        constants = replace(constants, **{key: number})
    return constants


def storage_bits(result: dict[str, Any], constants: EnergyConstants) -> dict[str, int]:
    """Bits to store all parameters in each format (only sparse conv layers differ)."""
    word = constants.word_bits
    total = {"index_free": 0, "bitmask": 0, "csr": 0, "dense": 0}
    sparse_weight_params = 0
    for layer in result["layers"]:
        if layer["pattern"] == "dense":
            continue
        out_c, in_c = layer["output_shape"][1], layer["input_shape"][1]
        kernels = out_c * in_c
        nnz = layer["params"] - (layer["dense_params"] - kernels * 9)  # minus bias
        sparse_weight_params += nnz
        total["bitmask"] += kernels * 9
        total["csr"] += nnz * constants.csr_index_bits + (out_c + 1) * constants.csr_rowptr_bits
    base = result["params"] * word
    total["index_free"] = base
    total["bitmask"] += base
    total["csr"] += base
    total["dense"] = result["dense_params"] * word
    total["sparse_weights"] = sparse_weight_params
    return total


def energy_estimate(result: dict[str, Any], constants: EnergyConstants | None = None) -> dict[str, Any]:
    """Energy per image (inference) and per image of a training step, in microjoules.

    ``result`` is :func:`psconv.profile` of the model for one image.
    """
    c = constants or EnergyConstants()
    batch_images = result["input_size"][0]
    if batch_images != 1:
        raise ValueError("energy_estimate needs profile(model, (1, C, H, W)): one image")
    words_per_bit = 1 / c.word_bits
    activations = sum(
        math.prod(layer["input_shape"]) + math.prod(layer["output_shape"]) for layer in result["layers"]
    )
    storage = storage_bits(result, c)
    formats: dict[str, dict[str, float]] = {}
    for fmt in ("index_free", "bitmask", "csr", "dense"):
        weight_words = storage[fmt] * words_per_bit
        params = result["dense_params"] if fmt == "dense" else result["params"]
        macs = result["dense_macs"] if fmt == "dense" else result["macs"]
        infer_dram = weight_words / c.infer_batch + activations
        # training: weights x2 + grad write, SGD momentum 3 reads + 2 writes of params
        train_dram = (2 * weight_words + 5 * params) / c.train_batch + 4 * activations
        formats[fmt] = {
            "weight_bytes": storage[fmt] / 8,
            "inference_uj": (macs * c.mac_pj + infer_dram * c.dram_pj) * 1e-6,
            "inference_weight_dram_uj": weight_words / c.infer_batch * c.dram_pj * 1e-6,
            "train_step_uj": (3 * macs * c.mac_pj + train_dram * c.dram_pj) * 1e-6,
            "train_weight_dram_uj": (2 * weight_words + 5 * params) / c.train_batch * c.dram_pj * 1e-6,
        }
    return {
        "constants": asdict(c),
        "sources": SOURCES,
        "macs": result["macs"],
        "dense_macs": result["dense_macs"],
        "activation_words": activations,
        "formats": formats,
    }
