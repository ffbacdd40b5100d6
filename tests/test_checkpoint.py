"""Checkpoints: safetensors files that round-trip exactly, and every bad file refused with one
line naming it (random bytes, truncation, bit flips, lying headers, hostile pickles), and
files of the first format still loading."""

from __future__ import annotations

import copy
import json
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn

import psconv
from psconv import inspect_checkpoint, predict
from psconv.checkpoint import CheckpointError, load_checkpoint, read_header
from psconv.checkpoint_v1 import MAGIC
from psconv.cli import main

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def vgg_sparse() -> nn.Module:
    torch.manual_seed(0)
    model = psconv.create_model("vgg16", "PSD1_P16")
    model.train()  # non-trivial BN statistics, so a reload must restore buffers too
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    return model.eval()


def test_round_trip_identical_outputs_and_compact_size(vgg_sparse: nn.Module, tmp_path: Path) -> None:
    path = psconv.save(vgg_sparse, tmp_path / "m.safetensors", accuracy=91.5)
    stored = sum(t.numel() for t in vgg_sparse.state_dict().values() if t.is_floating_point())
    assert path.stat().st_size <= 1.02 * 4 * stored + 64 * 1024
    loaded = psconv.load(path)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded(x), vgg_sparse(x))
    assert psconv.read_header(path)["meta"] == {"accuracy": 91.5}


def test_opens_with_safetensors_and_names_the_pattern(vgg_sparse: nn.Module, tmp_path: Path) -> None:
    path = psconv.save(vgg_sparse, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        weights = {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads(metadata["config"])["pattern"] == "PSD1_P16"
    assert json.loads(metadata["sparse_layers"])["features.3"]["pattern"] == "PSD1_P16"
    state = vgg_sparse.state_dict()
    assert set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in state)
    assert not any("mask" in n or "index" in n for n in weights)  # index-free


def test_extra_state_round_trips(tmp_path: Path) -> None:
    model = psconv.create_model("resnet18", "PS4_P4")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    extra = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 3, "pair": (1, 2.5)}
    ckpt = psconv.load_checkpoint(psconv.save(model, tmp_path / "r.safetensors", extra=extra))
    opt2 = torch.optim.SGD(ckpt.model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt.extra["optimizer"])
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert torch.equal(ckpt.extra["rng"], torch.get_rng_state())
    assert ckpt.extra["epoch"] == 3 and ckpt.extra["pair"] == (1, 2.5)


def test_custom_model_needs_skeleton(tmp_path: Path) -> None:
    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))

    model = psconv.sparsify(net(), "pSC2", seed=3)
    path = psconv.save(model, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match="pass a skeleton"):
        psconv.load(path)
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(psconv.load(path, model=net())(x), model(x))


def test_tied_weights_are_saved(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight  # shared storage: safetensors refuses it unless copied
    path = psconv.save(model, tmp_path / "tied.safetensors")
    other = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    loaded = psconv.load(path, model=other)
    assert torch.equal(loaded[1].weight, model[0].weight)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = psconv.save(psconv.create_model("resnet18", "PS1_P9"), tmp_path / "a.safetensors")
    before = path.read_bytes()

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        psconv.save(psconv.create_model("resnet18", "dense"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


# --------------------------------------------------------------------------------------------
# Files of psconv 0.1's format: written here as that version wrote them, loaded now.


def _write_v1(model: nn.Module, path: Path, **meta: Any) -> Path:
    import zlib

    names = {torch.float32: "float32", torch.int64: "int64"}
    entries, chunks, offset, state = [], [], 0, {}
    for key, t in model.state_dict().items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        entries.append(
            {"dtype": names[t.dtype], "shape": list(t.shape), "offset": offset, "nbytes": len(raw)}
        )
        state[key] = {"__tensor__": len(entries) - 1}
        chunks.append(raw)
        offset += len(raw)
    data = b"".join(chunks)
    header = {"format": "psconv-checkpoint", "version": 1, "config": model.psconv_config,
              "sparse_layers": psconv.convert.sparse_layers(model), "meta": meta, "state": state,
              "extra": None, "tensors": entries, "data_bytes": len(data), "data_crc32": zlib.crc32(data)}  # fmt: skip
    head = json.dumps(header).encode()
    path.write_bytes(MAGIC + struct.pack("<Q", len(head)) + head + data)
    return path


def test_first_format_still_loads_and_converts(vgg_sparse: nn.Module, tmp_path: Path) -> None:
    old = _write_v1(vgg_sparse, tmp_path / "old.ckpt", dataset="cifar10")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(psconv.load(old)(x), vgg_sparse(x))
    assert inspect_checkpoint.summarize_checkpoint(old)["format_version"] == 1
    new = tmp_path / "new.safetensors"
    assert main(["convert-checkpoint", str(old), str(new)]) == 0
    assert torch.equal(psconv.load(new)(x), vgg_sparse(x)) and read_header(new)["format_version"] == 2
    assert main(["convert-checkpoint", str(old), str(new)]) == 2  # never replaced without --force
    raw = bytearray(old.read_bytes())
    raw[-10] ^= 0xFF
    old.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        psconv.load(old)


# --------------------------------------------------------------------------------------------
# Every reader refuses a bad file with one line naming it


def _tiny_dense() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1)
    )


def _tiny_sparse(width: int = 6) -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, width, 3, padding=1)
    )
    return psconv.sparsify(model, "PSD1_P4")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    torch.manual_seed(0)
    opt_state = {"momentum": torch.ones(5)}
    path = tmp_path_factory.mktemp("t") / "tiny.safetensors"
    return psconv.save(_tiny_sparse(), path, extra=opt_state, accuracy=1.0).read_bytes()


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack_from("<Q", raw, 0)
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _join(header: dict[str, Any], data: bytes) -> bytes:
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def _assert_clean_failure(path: Path, *, must_fail: bool = True) -> None:
    """Every reader refuses the file with a one-line CheckpointError that names it (or, for a
    benign mutation, loads it); nothing else may escape."""
    outcomes = []
    for reader in (
        lambda: load_checkpoint(path, model=_tiny_dense()),
        lambda: read_header(path),
        lambda: inspect_checkpoint.summarize_checkpoint(path),
    ):
        try:
            reader()
            outcomes.append("ok")
        except CheckpointError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            outcomes.append("refused")
    if must_fail:
        assert outcomes[0] == "refused"


@FUZZ
@given(st.binary(max_size=300))
@example(b"")
@example(struct.pack("<Q", 2**64 - 1))
@example(struct.pack("<Q", 2**40) + b"{}")
@example(struct.pack("<Q", 2) + b"{}")
@example(MAGIC + struct.pack("<Q", 2**40) + b"{}")
@example(b"\x80\x04K\x01.")  # a pickle
@example(b"PK\x03\x04" + bytes(100))  # the start of a zip (torch.save)
def test_random_bytes_refused(tmp_path: Path, data: bytes) -> None:
    for prefix in (b"", MAGIC, struct.pack("<Q", len(data))):
        path = tmp_path / "random.safetensors"
        path.write_bytes(prefix + data)
        _assert_clean_failure(path)


def test_truncation_at_every_section_boundary(tiny_file: bytes, tmp_path: Path) -> None:
    header, data = _split(tiny_file)
    head_end = len(tiny_file) - len(data)
    cuts = set(range(0, 24)) | {head_end - 1, head_end, head_end + 1, len(tiny_file) - 1, head_end // 2}
    for name, entry in header.items():  # every tensor's first and last byte
        if name != "__metadata__":
            for edge in entry["data_offsets"]:
                cuts |= {head_end + edge - 1, head_end + edge, head_end + edge + 1}
    path = tmp_path / "cut.safetensors"
    for cut in sorted(c for c in cuts if 0 <= c < len(tiny_file)):
        path.write_bytes(tiny_file[:cut])
        _assert_clean_failure(path)
    path.write_bytes(tiny_file + b"\x00")  # trailing garbage
    _assert_clean_failure(path)


@FUZZ
@given(st.data())
def test_bit_flips(tiny_file: bytes, tmp_path: Path, data: st.DataObject) -> None:
    raw = bytearray(tiny_file)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    path = tmp_path / "flip.safetensors"
    path.write_bytes(bytes(raw))
    # A flip inside a JSON string (say, the meta) can leave a loadable file; a flip in the data
    # is caught by the checksum. Either way: loaded or CheckpointError, nothing else.
    _assert_clean_failure(path, must_fail=False)


def test_corrupt_data_byte_names_the_checksum(tiny_file: bytes, tmp_path: Path) -> None:
    raw = bytearray(tiny_file)
    raw[-3] ^= 0xFF
    path = tmp_path / "bad.safetensors"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path, model=_tiny_dense())


def _meta(update: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """A lie told in the psconv metadata (each field a JSON string)."""

    def lie(header: dict[str, Any]) -> None:
        m = header["__metadata__"]
        parsed = {k: json.loads(v) for k, v in m.items() if k in ("config", "sparse_layers", "meta", "extra")}
        update(parsed)
        for k in ("config", "sparse_layers", "meta", "extra"):
            if k in parsed:
                m[k] = json.dumps(parsed[k])

    return lie


def _first_weight(h: dict[str, Any]) -> dict[str, Any]:
    return h["0.weight"]


_LIES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("version 3", lambda h: h["__metadata__"].update(format_version="3")),
    ("version missing", lambda h: h["__metadata__"].pop("format_version")),
    ("foreign format", lambda h: h["__metadata__"].update(format="transformers")),
    ("no metadata", lambda h: h.pop("__metadata__")),
    ("config not json", lambda h: h["__metadata__"].update(config="{")),
    ("meta not a dict", lambda h: h["__metadata__"].update(meta="[1]")),
    ("extra deeply nested", lambda h: h["__metadata__"].update(extra="[" * 5000 + "]" * 5000)),
    ("extra names a missing tensor", _meta(lambda p: p.update(extra={"momentum": {"__tensor__": "nope"}}))),
    ("crc lies", lambda h: h["__metadata__"].update(tensors_crc32="12345")),
    ("crc missing", lambda h: h["__metadata__"].pop("tensors_crc32")),
    ("shape too big", lambda h: _first_weight(h).update(shape=[10**6, 10**6])),
    ("shape negative", lambda h: _first_weight(h).update(shape=[-4])),
    ("shape string", lambda h: _first_weight(h).update(shape="4")),
    ("offsets past end", lambda h: _first_weight(h).update(data_offsets=[0, 10**9])),
    ("offsets reversed", lambda h: _first_weight(h).update(data_offsets=[8, 0])),
    ("dtype unknown", lambda h: _first_weight(h).update(dtype="C128")),
    ("dtype changed", lambda h: _first_weight(h).update(dtype="I32")),
    ("layers not a dict", _meta(lambda p: p.update(sparse_layers=[1]))),
    ("layer seed missing", _meta(lambda p: p["sparse_layers"]["3"].pop("seed"))),
    ("layer seed infinite", _meta(lambda p: p["sparse_layers"]["3"].update(seed=1e400))),
    ("layer pattern bad", _meta(lambda p: p["sparse_layers"]["3"].update(pattern="PS5_P4"))),
    ("layer pattern huge", _meta(lambda p: p["sparse_layers"]["3"].update(pattern="pSC" + "9" * 5000))),
    ("layer not a conv", _meta(lambda p: p["sparse_layers"].update({"1": {"pattern": "PS4_P4", "seed": 0}}))),
    ("layer missing", _meta(lambda p: p["sparse_layers"].update({"9.x": {"pattern": "PS4_P4", "seed": 0}}))),
    ("config huge classes", _meta(lambda p: p.update(config={"name": "vgg16", "num_classes": 10**13, "image_size": 32}))),
    ("config huge image", _meta(lambda p: p.update(config={"name": "vgg16", "num_classes": 10, "image_size": 32 * 2**20}))),
    ("config mid-size lie", _meta(lambda p: p.update(config={"name": "vgg16", "num_classes": 10**7, "image_size": 32}))),
    ("config bad types", _meta(lambda p: p.update(config={"name": ["vgg16"], "num_classes": "10", "image_size": None}))),
    ("config unknown model", _meta(lambda p: p.update(config={"name": "nope", "num_classes": 10, "image_size": 32}))),
]  # fmt: skip


@pytest.mark.parametrize(("what", "lie"), _LIES, ids=[w for w, _ in _LIES])
def test_lying_header(tiny_file: bytes, tmp_path: Path, what: str, lie: Callable) -> None:
    header, data = _split(tiny_file)
    lie(header)
    path = tmp_path / "lie.safetensors"
    path.write_bytes(_join(header, data))
    # The header is not checksummed: a consistent lie (a seed a periodic pattern ignores) can
    # load, and a skeleton makes ``config`` irrelevant; everything else must be refused.
    benign = what.startswith("config")
    _assert_clean_failure(path, must_fail=not benign)
    if benign:
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)  # no skeleton: the model is built from the lying config


def test_header_from_another_model(tiny_file: bytes, tmp_path: Path) -> None:
    other = psconv.save(_tiny_sparse(width=8), tmp_path / "other.safetensors").read_bytes()
    h_tiny, d_tiny = _split(tiny_file)
    h_other, _ = _split(other)
    path = tmp_path / "swap.safetensors"
    path.write_bytes(_join(h_other, d_tiny))  # header of one, data of the other
    _assert_clean_failure(path)
    path.write_bytes(other)  # a consistent file, but of another model than the skeleton given
    with pytest.raises(CheckpointError, match="does not match its model"):
        load_checkpoint(path, model=_tiny_dense())
    header = copy.deepcopy(h_tiny)  # a registered network's config with a tiny model's tensors
    header["__metadata__"]["config"] = json.dumps({"name": "resnet18", "num_classes": 10, "image_size": 32})
    path.write_bytes(_join(header, d_tiny))
    with pytest.raises(CheckpointError, match="cannot rebuild|does not match"):
        load_checkpoint(path)


def test_foreign_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "hub.safetensors"
    save_file({"w": torch.ones(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a psconv checkpoint"):
        psconv.load(path)


def test_not_a_file(tmp_path: Path) -> None:
    devices = [Path(p) for p in ("/dev/zero", "/dev/null") if Path(p).exists()]
    for path in (tmp_path, tmp_path / "missing.safetensors", *devices):  # /dev/zero: never read it all
        _assert_clean_failure(path)


# --------------------------------------------------------------------------------------------
# Files that try to run code


class _Payload:
    """Unpickling this creates the marker file (a stand-in for any code an attacker runs)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _hostile_files(folder: Path, marker: Path) -> list[Path]:
    payload = _Payload(marker)
    files = []
    for name, writer in [
        ("pickle.ckpt", lambda p: p.write_bytes(pickle.dumps({"state_dict": payload}))),
        ("torch_zip.pt", lambda p: torch.save({"model": payload, "w": torch.ones(2)}, p)),
        (
            "torch_legacy.pt",
            lambda p: torch.save({"model": payload}, p, _use_new_zipfile_serialization=False),
        ),
        ("magic_then_pickle.ckpt", lambda p: p.write_bytes(MAGIC + pickle.dumps(payload))),
        (
            "length_then_pickle.safetensors",
            lambda p: p.write_bytes(struct.pack("<Q", 20) + pickle.dumps(payload)),
        ),
    ]:
        path = folder / name
        writer(path)
        files.append(path)
    assert not marker.exists()  # writing them ran nothing
    probe = folder / "probe-marker"  # the payload is real: an unguarded loader would run it
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()
    probe.unlink()
    return files


def test_hostile_code_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    for path in _hostile_files(tmp_path, marker):
        readers = (psconv.load, lambda p: load_checkpoint(p, model=_tiny_dense()), read_header,
                   inspect_checkpoint.summarize_checkpoint, predict.load_for_inference)  # fmt: skip
        for reader in readers:
            with pytest.raises(CheckpointError, match=str(path)):
                reader(path)
        out = tmp_path / "out.onnx"
        for argv in (
            ["inspect", str(path)],
            ["predict", "--checkpoint", str(path), str(tmp_path)],
            ["export", "--checkpoint", str(path), "--format", "torchscript", "--out", str(out)],
            ["eval", "--checkpoint", str(path), "--data-dir", str(tmp_path)],
        ):
            assert main(argv) == 2
        assert not out.exists()
    assert not marker.exists()


def test_hostile_code_via_process(tmp_path: Path) -> None:
    """The same through the real entry point, in a fresh interpreter."""
    marker = tmp_path / "PWNED"
    (path, *_) = _hostile_files(tmp_path, marker)
    proc = subprocess.run([sys.executable, "-m", "psconv.cli", "inspect", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "not a psconv checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()
