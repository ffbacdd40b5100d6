"""Which path a layer call takes: the backend switches, the fallbacks, and what ``auto`` picks
where the efficiency model is (or is not) calibrated."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_kernels, run_python

from psconv import kernels
from psconv.layers import PSConv2d

pytestmark = pytest.mark.usefixtures("keep_backend")


@needs_kernels
def test_auto_backend_choice():
    """With autotuning off: the efficiency model where it is calibrated, oneDNN elsewhere."""
    from psconv.kernels import binding, dispatch

    kernels.set_backend("auto")
    x = torch.randn(1, 64, 8, 8)
    calibrated = binding.isa() in dispatch.CALIBRATED_ISAS
    assert kernels.uses_fast(PSConv2d(64, 64, pattern="PS4_P4"), x) == calibrated
    assert kernels.uses_fast(PSConv2d(64, 64, pattern="PSD1_P16"), x) == calibrated
    assert not kernels.uses_fast(PSConv2d(64, 64, pattern="dense"), x)
    assert not kernels.uses_fast(PSConv2d(64, 64, pattern="pSC4"), x)
    kernels.set_backend("reference")
    assert kernels.fast_forward(PSConv2d(64, 64, pattern="PS4_P4"), x) is None


def test_unsupported_inputs_fall_back():
    layer = PSConv2d(8, 8, pattern="PS4_P4")
    kernels.set_backend("fast")
    x64 = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    assert kernels.fast_forward(layer, x64) is None
    assert kernels.fast_supported(layer, torch.empty(1, 8, 5, 5, device="meta")) is not None
    layer64 = PSConv2d(8, 8, pattern="PS4_P4", dtype=torch.float64)
    y = layer64(x64)  # reference path, float64 end to end
    assert y.dtype == torch.float64


def test_set_backend_validation():
    with pytest.raises(ValueError):
        kernels.set_backend("bogus")
    kernels.set_backend("reference")
    assert kernels.get_backend() == "reference"


def test_using_backend_restores_the_previous_one_after_an_error(keep_backend):
    kernels.set_backend("fast")
    with pytest.raises(RuntimeError, match="inside"):
        with kernels.using_backend("reference"):
            assert kernels.get_backend() == "reference"
            raise RuntimeError("inside")
    assert kernels.get_backend() == "fast"
    with pytest.raises(ValueError, match="backend must be one of"):
        with kernels.using_backend("bogus"):
            pass
    assert kernels.get_backend() == "fast"


def test_env_backend_and_missing_library():
    code = (
        "import torch; from psconv import kernels; from psconv.layers import PSConv2d\n"
        "l = PSConv2d(16, 16, pattern='PS4_P4'); x = torch.randn(1, 16, 6, 6)\n"
        "y = l(x); r = l.reference_forward(x)\n"
        "print(kernels.get_backend(), kernels.kernels_available(), float((y - r).abs().max()) < 1e-5)"
    )
    assert run_python(code, PSCONV_BACKEND="reference") == f"reference {kernels.kernels_available()} True"
    assert run_python(code, PSCONV_DISABLE_KERNELS="1", PSCONV_BACKEND="fast") == "fast False True"
    assert run_python(code, PSCONV_KERNEL_LIB="/nonexistent/lib.so") == "auto False True"


@needs_kernels
def test_auto_stays_on_onednn_where_the_model_is_uncalibrated():
    """On the portable build (a CPU the efficiency model was not calibrated on) 'auto' never
    picks the compiled kernels; 'fast' still can."""
    code = (
        "import torch; from psconv import kernels; from psconv.layers import PSConv2d\n"
        "l = PSConv2d(64, 64, pattern='PSD1_P16'); x = torch.randn(1, 64, 8, 8)\n"
        "a = kernels.uses_fast(l, x); kernels.set_backend('fast'); print(a, kernels.uses_fast(l, x))"
    )
    assert run_python(code, PSCONV_KERNEL_ISA="generic") == "False True"
    if kernels.kernel_info()["isa"] == "avx512":
        assert run_python(code) == "True True"  # calibrated here: the model predicts a clear win


def test_backend_choice_carries_the_constant_mark_of_torch_compiler():
    """The hand-set mark must be exactly what ``torch.compiler.assume_constant_result`` sets
    (a torch upgrade that changes the mechanism fails here, not as graph breaks)."""
    from psconv.kernels import dispatch

    probe = torch.compiler.assume_constant_result(lambda: None)
    marks = vars(probe).items()
    assert marks and marks <= vars(dispatch._backend_wants).items()


def test_import_leaves_dynamo_unloaded():
    """``torch._dynamo`` costs about 2 s to import: ``import psconv`` (every CLI call) must not pay it."""
    assert run_python("import sys, psconv.cli; print('torch._dynamo' in sys.modules)") == "False"


@needs_kernels
def test_an_eager_measured_decision_leaves_sympy_unloaded(tmp_path):
    """Only traced calls need symbolic shapes; their module loads sympy (0.5 s), which a batch-1
    prediction on a remembered decision must not pay (the measurement itself loads it)."""
    code = (
        "import sys, torch, psconv\n"
        "with torch.no_grad(): psconv.PSConv2d(16, 16, pattern='PSD1_P16')(torch.randn(1, 16, 8, 8))\n"
        "print('sympy' in sys.modules)"
    )
    env = {"PSCONV_AUTOTUNE": "on", "PSCONV_CACHE_DIR": str(tmp_path)}
    run_python(code, **env)  # measures, and remembers on disk
    assert (tmp_path / "autotune-v3.json").is_file()
    assert run_python(code, **env) == "False"
