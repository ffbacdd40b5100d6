"""The inference form of a model: :func:`optimize_for_inference`.

What it does to a copy of the model (the original is left untouched), over its ``torch.fx``
graph:

- **BatchNorm folded** into the convolution before it (eval statistics): a per-output-channel
  scale of every kept weight plus a bias, so a sparse layer stays pattern-sparse with the same
  free weights;
- **ReLU and the residual add fused** into a sparse convolution's output epilogue (the kernel
  adds bias and residual and clamps as it stores: ``relu(conv(x) + bias + shortcut)``, no
  separate pass over memory);
- **dense convolutions** get their BatchNorm folded too. Pointwise ones (1x1, ungrouped: the
  ResNet shortcuts) become one matrix product over the channels-last pixels
  (:class:`PointwiseMatmul`): at batch 1 that made a sparse ResNet18 0.2 ms faster than its
  three shortcuts on oneDNN (Zen 3, 2 threads: 50-70 us a shortcut alone against 70-110),
  and the two are level at batch 32-128. The others (the first layer) get channels-last weights, which
  keeps them on oneDNN's fast path for the channels-last activations the sparse kernels produce.

Outputs equal the original model's in eval mode within float tolerance. Models that
``torch.fx`` cannot trace are refused with the reason.
"""

from __future__ import annotations

import copy
import operator
import os
import zipfile
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import kernels
from .layers import PSConv2d

__all__ = [
    "optimize_for_inference",
    "inference_form",
    "load_program",
    "FusedPSConv2d",
    "FusedConv2d",
    "PointwiseMatmul",
]


class FusedPSConv2d(PSConv2d):
    """A sparse conv with BatchNorm folded in and, optionally, ReLU and a residual add fused
    into its output: ``forward(x, residual=None)``."""

    relu: bool = False

    @classmethod
    def from_layer(cls, layer: PSConv2d) -> FusedPSConv2d:
        fused = copy.copy(layer)
        fused.__class__ = cls
        fused.relu = False
        return fused

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        out = kernels.fast_forward(self, x, self.relu, residual)
        if out is not None:
            return out
        out = self.reference_forward(x)
        if residual is not None:
            out = out + residual
        return F.relu(out) if self.relu else out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu={self.relu}"


class FusedConv2d(nn.Module):
    """A sparse layer's dense twin with the same fused output, ``forward(x, residual=None) =
    relu?(conv(x) + bias + residual)``: its kernel with the zeros written in, once. An exported
    program gets it for the layers that oneDNN runs: traced, :class:`FusedPSConv2d`'s reference
    path scatters its kernel on every call (a ResNet18 PSD4_P8 program on oneDNN ran 4.5x
    slower than the eager model), and carries the mask and index that the scatter needs."""

    def __init__(self, layer: PSConv2d) -> None:
        super().__init__()
        with torch.no_grad():
            weight = layer.dense_weight().contiguous(memory_format=torch.channels_last)
        self.weight = nn.Parameter(weight, requires_grad=False)
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.stride, self.padding = layer.stride, layer.padding
        self.relu = bool(getattr(layer, "relu", False))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if residual is not None:
            out = out + residual
        return F.relu(out) if self.relu else out

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, stride={self.stride}, relu={self.relu}"


class PointwiseMatmul(nn.Module):
    """A 1x1 ungrouped convolution (any stride, no padding) as ``pixels @ weight.T + bias`` over
    the input's channels-last pixels; the output is channels-last. Equal to the conv's output
    within float rounding."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        out_channels, in_channels = conv.weight.shape[:2]
        self.stride = conv.stride
        self.weight = nn.Parameter(conv.weight.detach().reshape(out_channels, in_channels).clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(out_channels)
        self.bias = nn.Parameter(bias.to(self.weight))

    @staticmethod
    def applies_to(module: nn.Module) -> bool:
        return (
            type(module) is nn.Conv2d
            and module.kernel_size == (1, 1)
            and module.groups == 1
            and module.padding == (0, 0)
            and module.dilation == (1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.permute(0, 2, 3, 1)  # a view when x is channels-last
        sh, sw = self.stride
        if sh != 1 or sw != 1:
            pixels = pixels[:, ::sh, ::sw, :]
        n, h, w, c = pixels.shape
        out = torch.addmm(self.bias, pixels.reshape(n * h * w, c), self.weight.t())
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, stride={self.stride}"


class _Tracer(fx.Tracer):
    """Keeps sparse convs whole, and the submodules in ``leaves`` (ids): those torch.fx cannot
    trace into."""

    def __init__(self, leaves: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, PSConv2d) or id(m) in self.leaves or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule:
    """The model's graph. Where Python control flow on tensors stops torch.fx inside some
    submodules (timm's ``Conv2dSame`` pads by the input's size), those are kept whole, innermost
    first, and the rest of the model is still optimised."""
    try:
        return fx.GraphModule(model, _Tracer().trace(model))
    except Exception:  # fx raises many types for untraceable Python
        leaves: set[int] = set()
        # Reversed pre-order: every module after all of its submodules.
        for module in reversed(list(model.modules())[1:]):
            tracer = _Tracer(frozenset(leaves))
            if tracer.is_leaf_module(module, ""):
                continue
            try:
                tracer.trace(module)
            except Exception:
                leaves.add(id(module))
        if not leaves:
            raise
        return fx.GraphModule(model, _Tracer(frozenset(leaves)).trace(model))


def _fold_scale(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(y) == y * scale + shift per channel, in eval mode."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = bn.weight.detach() * scale
    shift = -bn.running_mean * scale
    return scale, shift + bn.bias.detach() if bn.bias is not None else shift


def _foldable(bn: nn.Module) -> bool:
    """A plain BatchNorm2d that uses its running statistics in eval mode (subclasses may do
    more, such as timm's BatchNormAct2d; without running statistics it normalises by the batch)."""
    return type(bn) is nn.BatchNorm2d and bn.running_mean is not None and bn.running_var is not None


@torch.no_grad()
def _fold_into_sparse(conv: PSConv2d, bn: nn.BatchNorm2d) -> FusedPSConv2d:
    fused = FusedPSConv2d.from_layer(conv)
    scale, shift = _fold_scale(bn)
    filters = conv.flat_index // (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
    fused.weight_values = nn.Parameter(conv.weight_values.detach() * scale[filters])
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
    fused.bias = nn.Parameter(bias * scale + shift)
    return fused


@torch.no_grad()
def _fold_into_dense(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = copy.deepcopy(conv)
    scale, shift = _fold_scale(bn)
    fused.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1))
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
    fused.bias = nn.Parameter(bias * scale + shift)
    return fused


def _is_module(node: fx.Node, modules: dict[str, nn.Module], kind: type | tuple[type, ...]) -> bool:
    return node.op == "call_module" and isinstance(modules.get(str(node.target)), kind)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if _is_module(node, modules, nn.ReLU):
        return True
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        return True
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_add(node: fx.Node) -> bool:
    return (
        node.op == "call_function"
        and node.target in (operator.add, torch.add, operator.iadd)
        and len(node.args) == 2
    )


def _set_module(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def _fold_batchnorms(gm: fx.GraphModule) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _foldable(modules[str(node.target)]) or len(node.args) != 1:
            continue
        conv = node.args[0]
        if not isinstance(conv, fx.Node) or len(conv.users) != 1 or conv.op != "call_module":
            continue
        if _is_module(conv, modules, PSConv2d):
            _set_module(
                gm, str(conv.target), _fold_into_sparse(modules[str(conv.target)], modules[str(node.target)])
            )
        elif type(modules[str(conv.target)]) is nn.Conv2d:
            _set_module(
                gm, str(conv.target), _fold_into_dense(modules[str(conv.target)], modules[str(node.target)])
            )
        else:
            continue
        node.replace_all_uses_with(conv)
        gm.graph.erase_node(node)
        modules = dict(gm.named_modules())


def _fuse_epilogues(gm: fx.GraphModule) -> None:
    """relu(conv(x)) and relu(conv(x) + shortcut) into one call of a fused sparse conv."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if not _is_relu(node, modules) or not isinstance(node.args[0], fx.Node):
            continue
        src, residual = node.args[0], None
        if _is_add(src) and len(src.users) == 1:
            a, b = src.args
            for conv, other in ((a, b), (b, a)):
                if (
                    isinstance(conv, fx.Node)
                    and _is_module(conv, modules, FusedPSConv2d)
                    and len(conv.users) == 1
                ):
                    if isinstance(other, fx.Node):
                        src, residual = conv, other
                        break
        if not (_is_module(src, modules, FusedPSConv2d) and len(src.users) == 1):
            continue
        module = modules[str(src.target)]
        if module.relu:
            continue
        module.relu = True
        if residual is not None:
            add = next(iter(src.users))
            src.args = (src.args[0], residual)
            if _order(gm)[residual] > _order(gm)[src]:
                residual.append(src)  # the shortcut is computed after the conv: run the conv later
            add.replace_all_uses_with(src)
            gm.graph.erase_node(add)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)


def _order(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(gm.graph.nodes)}


def _wrap_sparse(gm: fx.GraphModule) -> None:
    """Sparse convs without a BatchNorm still take the fused form (no ReLU): one code path."""
    for name, module in list(gm.named_modules()):
        if isinstance(module, PSConv2d) and not isinstance(module, FusedPSConv2d):
            _set_module(gm, name, FusedPSConv2d.from_layer(module))


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """An eval-only copy of ``model`` with BatchNorm folded, ReLU and residual adds fused into
    the sparse convolutions, 1x1 convs as matrix products and the other dense convs in
    channels-last (see the module doc)."""
    model = copy.deepcopy(model).eval()
    try:
        gm = _trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python
        raise ValueError(
            f"optimize_for_inference: torch.fx cannot trace this model ({type(exc).__name__}: {exc})"
        ) from None
    _fold_batchnorms(gm)
    _wrap_sparse(gm)
    _fuse_epilogues(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    for name, module in list(gm.named_modules()):
        if PointwiseMatmul.applies_to(module):
            _set_module(gm, name, PointwiseMatmul(module))
        elif type(module) is nn.Conv2d:
            module.to(memory_format=torch.channels_last)
    config: Any = getattr(model, "psconv_config", None)
    if config is not None:
        gm.psconv_config = config  # type: ignore[assignment]
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm.eval()


def load_program(path: str | os.PathLike[str]) -> nn.Module:
    """A ``psconv export --format pt2`` file as a module whose sparse layers call the kernels
    directly: ``torch.export.load(path).module()`` with each ``psconv::conv`` call retargeted to
    :func:`~psconv.kernels.ops.conv_direct`. Same outputs; at batch 1 it skips the operator
    dispatch of every sparse layer (see ``benchmarks/bench_pt2.py``)."""
    from .kernels.ops import conv_direct

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_program: no file {path!r}")
    names: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    if not any(name.endswith("/extra/psconv.json") for name in names):
        raise ValueError(f"load_program: {path!r} is not a program written by `psconv export --format pt2`")
    module = torch.export.load(path).module()
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.psconv.conv.default:
            node.target = conv_direct
    module.recompile()
    return module


def inference_form(model: nn.Module) -> nn.Module:
    """:func:`optimize_for_inference` where torch.fx can trace the model, else the model in eval
    mode (for ``predict`` and ``eval``, which must run any checkpoint)."""
    try:
        return optimize_for_inference(model)
    except ValueError:
        return model.eval()
