"""'auto' by measurement (psconv.kernels.autotune): measured once per layer shape, remembered in
the process and on disk, a damaged cache ignored, and the switch."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_kernels

from psconv import kernels
from psconv.kernels import autotune, binding, dispatch
from psconv.layers import PSConv2d


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    """A private cache folder, 'auto' backend, autotuning on; everything restored after."""
    monkeypatch.setenv("PSCONV_CACHE_DIR", str(tmp_path))
    old = (kernels.get_backend(), autotune.get_autotune())
    monkeypatch.setitem(autotune._state, "decisions", None)
    kernels.set_backend("auto")
    autotune.set_autotune("on")
    yield
    kernels.set_backend(old[0])
    autotune.set_autotune(old[1])
    autotune._state["decisions"] = None


def _layer_and_input() -> tuple[PSConv2d, torch.Tensor]:
    return PSConv2d(32, 32, pattern="PSD1_P16"), torch.randn(2, 32, 8, 8)


def _key(layer: PSConv2d, x: torch.Tensor) -> str:
    shape = dispatch._shape_keys(layer, x)[0]
    return autotune.cache_key(layer.pattern.name, layer.out_channels, layer.in_channels, layer.seed, shape)


@needs_kernels
def test_measures_once_and_follows_the_measurement(monkeypatch):
    layer, x = _layer_and_input()
    with torch.no_grad():
        chosen = kernels.uses_fast(layer, x)
        key = _key(layer, x)
    entry = json.loads(autotune.cache_path().read_text())["layers"][key]
    assert entry["fast"] == chosen == (entry["dense_ms"] >= autotune.MIN_SPEEDUP * entry["fast_ms"])
    assert entry["fast_ms"] > 0 and entry["dense_ms"] > 0

    def no_second_measurement(*args):
        raise AssertionError("measured twice")

    monkeypatch.setattr(autotune, "_measure", no_second_measurement)
    with torch.no_grad():
        assert kernels.uses_fast(layer, x) == chosen
        y = layer(x)  # the whole call path, on the remembered decision
    kernels.set_backend("reference")
    with torch.no_grad():
        torch.testing.assert_close(y, layer(x), rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("fast", [True, False])
def test_decisions_come_from_the_disk_cache(fast, monkeypatch):
    layer, x = _layer_and_input()
    with torch.no_grad():
        key = _key(layer, x)
    record = {"fast": fast, "fast_ms": 1.0, "dense_ms": 1.0}
    autotune.cache_path().write_text(json.dumps({"version": autotune.CACHE_VERSION, "layers": {key: record}}))
    monkeypatch.setattr(autotune, "_measure", lambda *a: pytest.fail("measured despite the cache"))
    with torch.no_grad():
        assert kernels.uses_fast(layer, x) is fast


@needs_kernels
def test_a_training_call_is_a_separate_decision(monkeypatch):
    layer, x = _layer_and_input()
    with torch.no_grad():
        eval_key = _key(layer, x)
    train_key = _key(layer, x.requires_grad_(True))
    assert eval_key != train_key and eval_key.rsplit(",", 1)[0] == train_key.rsplit(",", 1)[0]


@needs_kernels
def test_a_damaged_cache_is_ignored_and_rewritten():
    autotune.cache_path().write_text('{"version": 1, "layers": {"x": ')
    layer, x = _layer_and_input()
    with pytest.warns(UserWarning, match="unreadable autotune cache ignored"), torch.no_grad():
        kernels.uses_fast(layer, x)
        key = _key(layer, x)
    assert key in json.loads(autotune.cache_path().read_text())["layers"]


@needs_kernels
def test_off_uses_the_model_where_calibrated_and_onednn_elsewhere(monkeypatch):
    autotune.set_autotune("off")
    layer, x = _layer_and_input()
    monkeypatch.setattr(autotune, "_measure", lambda *a: pytest.fail("measured with autotuning off"))
    monkeypatch.setattr(binding, "isa", lambda: "avx2")
    assert not kernels.uses_fast(layer, x)
    monkeypatch.setattr(binding, "isa", lambda: "avx512")
    assert kernels.uses_fast(layer, x)  # the model expects PSD1_P16 at 32 channels to win
    assert not autotune.cache_path().exists()


def test_auto_mode_measures_only_where_the_model_is_not_calibrated():
    autotune.set_autotune("auto")
    assert autotune.measures(calibrated=False) and not autotune.measures(calibrated=True)
    autotune.set_autotune("off")
    assert not autotune.measures(calibrated=False)


def test_set_autotune_names_the_choices():
    with pytest.raises(ValueError, match=r"autotune must be one of \('auto', 'on', 'off'\), got 'yes'"):
        autotune.set_autotune("yes")


@needs_kernels
def test_measures_under_inference_mode():
    """A model run under torch.inference_mode still gets its layers measured and run."""
    layer, x = _layer_and_input()
    with torch.inference_mode():
        y = layer(x)
        assert _key(layer, x) in json.loads(autotune.cache_path().read_text())["layers"]
    kernels.set_backend("reference")
    with torch.no_grad():
        torch.testing.assert_close(y, layer(x), rtol=1e-4, atol=1e-4)


def _decide_by(rule):
    """A stand-in measurement: the kernel wins where ``rule(cout, batch class)`` says."""
    return lambda pattern, cout, cin, seed, shape: {
        "fast": rule(cout, shape[6]),
        "fast_ms": 1.0,
        "dense_ms": 1.0,
    }


def _sparse_stack() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [PSConv2d(16, 32, pattern="PSD1_P16"), torch.nn.ReLU(), PSConv2d(32, 64, pattern="PSD2_P8")]
    return torch.nn.Sequential(*layers).eval()


@needs_kernels
@pytest.mark.parametrize(
    ("rule", "recorded"),
    [
        (lambda cout, batch: True, 2),
        (lambda cout, batch: batch == 1, 0),  # wins at batch 1 only: not for every batch
        (lambda cout, batch: cout == 64, 1),
    ],
    ids=["everywhere", "batch-1-only", "one-layer"],
)
def test_free_batch_export_records_the_kernel_where_it_wins_at_batch_1_and_16(monkeypatch, rule, recorded):
    """A dynamic batch is never compared with a number (which would specialise the program, or
    fail the export), and the one program takes the kernel only where it wins at both ends."""
    monkeypatch.setattr(autotune, "_measure", _decide_by(rule))
    model = _sparse_stack()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 16, 8, 8),), dynamic_shapes=({0: batch},))
    assert sum(node.target is torch.ops.psconv.conv.default for node in program.graph.nodes) == recorded
    exported = program.module()
    with torch.no_grad():
        for b in (1, 3, 20):
            x = torch.randn(b, 16, 8, 8)
            torch.testing.assert_close(exported(x), model(x), rtol=1e-4, atol=1e-4)


@needs_kernels
def test_pt2_export_holds_free_weights_or_dense_kernels_and_no_index(monkeypatch, tmp_path):
    """A sparse layer on the kernels carries its free weights only (its layout comes from the
    pattern spec); one left on oneDNN becomes a plain convolution with its zeros written in, not
    a scatter of its weights on every call. Neither carries a mask or an index."""
    import psconv
    from psconv import export, predict

    monkeypatch.setattr(autotune, "_measure", _decide_by(lambda cout, batch: cout >= 256))
    model = psconv.create_model("resnet18", "PSD2_P8").eval()
    deploy = predict.load_for_inference(psconv.save(model, tmp_path / "m.safetensors", dataset="cifar10"))
    result = export.export_model(deploy, "pt2", tmp_path / "m.pt2")
    assert result["max_abs_diff"] < 1e-4
    layers = {name: m for name, m in deploy.model.named_modules() if isinstance(m, PSConv2d)}
    assert all(
        hasattr(m, "mask") and hasattr(m, "flat_index") for m in layers.values()
    )  # the model keeps them
    on_kernels = {name for name, m in layers.items() if m.out_channels >= 256}
    assert result["kernel_layers"] == len(on_kernels) > 0
    program = torch.export.load(tmp_path / "m.pt2")
    assert not any(key.endswith((".mask", ".flat_index")) for key in program.constants)
    assert not any("index_put" in str(node.target) for node in program.graph.nodes)
    for name, m in layers.items():
        free, dense = f"{name}.weight_values" in program.state_dict, f"{name}.weight" in program.state_dict
        assert (free, dense) == ((True, False) if name in on_kernels else (False, True))
        if dense:
            torch.testing.assert_close(program.state_dict[f"{name}.weight"] != 0, m.mask)


@needs_kernels
def test_a_dynamic_batch_compiles_whole(monkeypatch):
    """torch.compile with a dynamic batch (declared, or made so by a second batch size): the
    measured decision adds no graph break and no guard on the batch (a batch declared dynamic
    would fail the trace), and the one graph serves every batch."""
    monkeypatch.setattr(autotune, "_measure", _decide_by(lambda cout, batch: cout == 64))
    model = _sparse_stack()
    x = torch.randn(3, 16, 8, 8)
    torch._dynamo.mark_dynamic(x, 0)
    with torch.no_grad():
        assert torch._dynamo.explain(model)(x).graph_break_count == 0
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="eager")  # the capture is what is tested
        for b in (3, 20, 7):
            x = torch.randn(b, 16, 8, 8)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_a_measured_decision_is_a_constant_under_torch_compile(monkeypatch, grad):
    """A fixed batch: the decision is the one for that batch (training calls are their own),
    taken as a constant, with no graph break."""
    monkeypatch.setattr(autotune, "_measure", _decide_by(lambda cout, batch: batch == 4))
    model = _sparse_stack()
    with torch.set_grad_enabled(grad):
        explained = torch._dynamo.explain(model)(torch.randn(4, 16, 8, 8))
    assert explained.graph_break_count == 0
    nodes = [node for graph in explained.graphs for node in graph.graph.nodes]
    assert sum(node.target is torch.ops.psconv.conv.default for node in nodes) == 2


@needs_kernels
def test_pinned_decisions_come_before_the_cache_and_measuring(monkeypatch):
    layer, x = _layer_and_input()
    with torch.no_grad():
        key = _key(layer, x)

    def no_measurement(*args):
        raise AssertionError("measured a pinned layer")

    monkeypatch.setattr(autotune, "_measure", no_measurement)
    monkeypatch.setitem(autotune._state, "pinned", {})
    monkeypatch.setitem(autotune._state, "used", {})
    for fast in (True, False, True):  # each pin replaces the last, whatever the process decided
        autotune.reset_used()
        autotune.pin_decisions({key: {"fast": fast, "fast_ms": 1.0, "dense_ms": 2.0}})
        with torch.no_grad():
            assert kernels.uses_fast(layer, x) is fast
        assert autotune.used_decisions() == {key: {"fast": fast, "fast_ms": 1.0, "dense_ms": 2.0}}
    with pytest.raises(ValueError, match="expected an object with a true/false 'fast'"):
        autotune.pin_decisions({key: {"fast": "yes"}})
