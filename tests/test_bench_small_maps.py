"""benchmarks/bench_small_maps.py: its layer specs and one short run end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import needs_kernels

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_small_maps.py"
_spec = importlib.util.spec_from_file_location("bench_small_maps", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_layer_spec_parses() -> None:
    assert bench.parse_layer("128,256,8,2") == (128, 256, 8, 2)


@pytest.mark.parametrize("spec", ["128,256,8", "128,256,8,0", "a,b,c,d", "128,256,8,1,1"])
def test_bad_layer_spec_is_refused_with_the_argument_named(spec: str) -> None:
    with pytest.raises(ValueError, match="--layers"):
        bench.main(["--layers", spec])


@needs_kernels
def test_short_run_writes_both_settings(tmp_path: Path) -> None:
    out = tmp_path / "small.json"
    args = [
        "--rounds",
        "1",
        "--reps",
        "2",
        "--patterns",
        "PSD4_P8",
        "--layers",
        "128,32,4,1",
        "--json",
        str(out),
    ]
    assert bench.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["pattern"], r["layer"]) for r in rows] == [("PSD4_P8", "128,32,4,1")]
    assert rows[0]["on_us"] > 0 and rows[0]["off_us"] > 0
