"""Robustness: everything a user can get wrong ends as a clean error, never a crash.

- Property-based fuzzing (hypothesis) of the pattern spec parser and the checkpoint loader:
  random bytes, truncation at every section boundary, bit flips, foreign and lying headers,
  wrong versions, huge lengths, deep nesting: always ``CheckpointError`` naming the file.
- Hostile files that try to run code when loaded (pickle / ``torch.save`` payloads): refused,
  and the payload never runs.
- Corrupt, non-image, special and bomb files for ``predict``: reported and skipped.
- NaN/Inf: refused by :func:`psconv.deploy.classify` and for NaN weights; the raw network
  propagates NaN (documented here).
- Every CLI subcommand with missing or wrong arguments: one line on stderr, exit code 2, no
  traceback; no command overwrites a file the user did not name as its output.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

import psconv
from psconv import deploy
from psconv.checkpoint import MAGIC, CheckpointError, load_checkpoint, read_header
from psconv.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------------------------
# The pattern spec parser


def _check_spec(text: Any) -> None:
    try:
        pattern = psconv.parse_pattern(text)
    except ValueError:
        return
    assert isinstance(pattern, psconv.Pattern)
    assert psconv.parse_pattern(pattern.name) == pattern  # the canonical name round-trips
    mask = psconv.pattern_mask(pattern, 3, 5, 3, seed=1)
    kept = mask.reshape(15, 9).sum(1)
    allowed = {9, pattern.n}
    assert set(kept.tolist()) <= allowed


_GRAMMAR = st.from_regex(
    r"\A\s?(pSC|PS|PSD|psc|ps|Dense|dense|pSC9)?[0-9\u0663\u00b2]{0,3}(_P[0-9]{0,3})?"
    r"(\[[0-9, \]]{0,14}\]?)?\s?\Z"
)


@FUZZ
@given(st.one_of(st.text(max_size=30), _GRAMMAR))
@example("PS2_P3[01,34,78]")
@example("PSD4_P16")
@example("PS1_P" + "9" * 5000)
@example("pSC" + "9" * 5000)
@example("PS2_P3[01,34,78")
@example("PSD1_P1")
@example("PS0_P0")
@example("PS3_P2[]")
@example("PS1_P2[\u00b2]")
def test_spec_parser_parses_or_raises_value_error(text: str) -> None:
    _check_spec(text)


@pytest.mark.parametrize("value", [None, 5, 2.5, b"PS4_P4", ["PS4_P4"], {"n": 1}, object()])
def test_spec_parser_non_strings(value: object) -> None:
    with pytest.raises(ValueError):
        psconv.parse_pattern(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The checkpoint loader


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
    path = psconv.save(_tiny_sparse(), tmp_path_factory.mktemp("t") / "tiny.ckpt", accuracy=1.0)
    return path.read_bytes()


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack_from("<Q", raw, len(MAGIC))
    start = len(MAGIC) + 8
    return json.loads(raw[start : start + length]), raw[start + length :]


def _join(header: dict[str, Any], data: bytes) -> bytes:
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + data


def _assert_clean_failure(path: Path, *, must_fail: bool = True) -> None:
    """Every reader refuses the file with a CheckpointError that names it (or, for a benign
    mutation, loads it); nothing else may escape."""
    outcomes = []
    for reader in (
        lambda: load_checkpoint(path, model=_tiny_dense()),
        lambda: read_header(path),
        lambda: deploy.summarize_checkpoint(path),
    ):
        try:
            reader()
            outcomes.append("ok")
        except CheckpointError as exc:
            assert str(path) in str(exc)
            assert "\n" not in str(exc)
            outcomes.append("refused")
    if must_fail:
        assert outcomes[0] == "refused"


@FUZZ
@given(st.binary(max_size=300))
@example(b"")
@example(MAGIC)
@example(MAGIC + struct.pack("<Q", 2**64 - 1))
@example(MAGIC + struct.pack("<Q", 2**40) + b"{}")
@example(MAGIC[:-1] + b"\x02" + struct.pack("<Q", 2) + b"{}")
@example(b"\x80\x04K\x01.")  # a pickle
@example(b"PK\x03\x04" + bytes(100))  # the start of a zip (torch.save)
def test_random_bytes_refused(tmp_path: Path, data: bytes) -> None:
    for prefix in (b"", MAGIC, MAGIC + struct.pack("<Q", len(data))):
        path = tmp_path / "random.ckpt"
        path.write_bytes(prefix + data)
        _assert_clean_failure(path)


def test_truncation_at_every_section_boundary(tiny_file: bytes, tmp_path: Path) -> None:
    header, data = _split(tiny_file)
    head_end = len(tiny_file) - len(data)
    cuts = set(range(0, 24)) | {head_end - 1, head_end, head_end + 1, len(tiny_file) - 1}
    cuts |= {(head_end + 16) // 2}  # the middle of the JSON header
    for entry in header["tensors"]:  # every tensor's first and last byte
        for edge in (entry["offset"], entry["offset"] + entry["nbytes"]):
            cuts |= {head_end + edge - 1, head_end + edge, head_end + edge + 1}
    path = tmp_path / "cut.ckpt"
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
    path = tmp_path / "flip.ckpt"
    path.write_bytes(bytes(raw))
    # A flip inside a JSON string (say, the meta) can leave a loadable file; a flip in the data
    # is caught by the CRC. Either way: loaded or CheckpointError, nothing else.
    _assert_clean_failure(path, must_fail=False)


def test_header_from_another_model(tiny_file: bytes, tmp_path: Path) -> None:
    other = psconv.save(_tiny_sparse(width=8), tmp_path / "other.ckpt").read_bytes()
    h_tiny, d_tiny = _split(tiny_file)
    h_other, d_other = _split(other)
    path = tmp_path / "swap.ckpt"
    path.write_bytes(_join(h_other, d_tiny))  # header of one, data of the other
    _assert_clean_failure(path)
    # A consistent file, but of another model than the skeleton given.
    path.write_bytes(other)
    with pytest.raises(CheckpointError, match="does not match its model"):
        load_checkpoint(path, model=_tiny_dense())
    # A registered network's header with a tiny model's data (lengths and CRC made consistent).
    vgg_header = copy.deepcopy(h_tiny)
    vgg_header["config"] = {"name": "resnet18", "num_classes": 10, "image_size": 32}
    path.write_bytes(_join(vgg_header, d_tiny))
    _assert_clean_failure(path, must_fail=False)  # with the tiny skeleton it does load
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


_LIES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("version 2", lambda h: h.update(version=2)),
    ("version string", lambda h: h.update(version="1")),
    ("foreign format", lambda h: h.update(format="safetensors")),
    ("shape too big", lambda h: h["tensors"][0].update(shape=[10**6, 10**6])),
    ("shape negative", lambda h: h["tensors"][0].update(shape=[-4])),
    ("shape infinite", lambda h: h["tensors"][0].update(shape=[float("inf")])),
    ("shape NaN", lambda h: h["tensors"][0].update(shape=[float("nan")])),
    ("shape string", lambda h: h["tensors"][0].update(shape="4")),
    ("shape nested", lambda h: h["tensors"][0].update(shape=[[4]])),
    ("offset past end", lambda h: h["tensors"][-1].update(offset=h["data_bytes"])),
    ("offset negative", lambda h: h["tensors"][1].update(offset=-8)),
    ("offset infinite", lambda h: h["tensors"][1].update(offset=float("inf"))),
    ("offset null", lambda h: h["tensors"][1].update(offset=None)),
    ("nbytes lies", lambda h: h["tensors"][0].update(nbytes=h["tensors"][0]["nbytes"] + 4)),
    ("dtype unknown", lambda h: h["tensors"][0].update(dtype="complex128")),
    ("dtype object", lambda h: h["tensors"][0].update(dtype="object")),
    ("dtype list", lambda h: h["tensors"][0].update(dtype=["float32"])),
    ("dtype changed", lambda h: h["tensors"][0].update(dtype="int32")),
    ("table not a list", lambda h: h.update(tensors={"0": 1})),
    ("table entry string", lambda h: h["tensors"].__setitem__(0, "x")),
    ("table empty", lambda h: h.update(tensors=[])),
    ("state ref out of range", lambda h: h["state"].update({"0.weight": {"__tensor__": 999}})),
    ("state ref string", lambda h: h["state"].update({"0.weight": {"__tensor__": "x"}})),
    ("state not a dict", lambda h: h.update(state=[1, 2])),
    ("state items malformed", lambda h: h["state"].update({"0.weight": {"__items__": [[1]]}})),
    ("state deeply nested", lambda h: h.update(extra=json.loads("[" * 800 + "]" * 800))),
    ("meta not a dict", lambda h: h.update(meta="x")),
    ("layers not a dict", lambda h: h.update(sparse_layers=[1])),
    ("layer seed missing", lambda h: h["sparse_layers"]["3"].pop("seed")),
    ("layer seed infinite", lambda h: h["sparse_layers"]["3"].update(seed=float("inf"))),
    ("layer seed huge", lambda h: h["sparse_layers"]["3"].update(seed=10**400)),
    ("layer pattern bad", lambda h: h["sparse_layers"]["3"].update(pattern="PS5_P4")),
    ("layer pattern huge", lambda h: h["sparse_layers"]["3"].update(pattern="pSC" + "9" * 5000)),
    ("layer not a conv", lambda h: h["sparse_layers"].update({"1": {"pattern": "PS4_P4", "seed": 0}})),
    ("layer missing", lambda h: h["sparse_layers"].update({"9.x": {"pattern": "PS4_P4", "seed": 0}})),
    (
        "config huge classes",
        lambda h: h.update(config={"name": "vgg16", "num_classes": 10**13, "image_size": 32}),
    ),
    (
        "config huge image",
        lambda h: h.update(config={"name": "vgg16", "num_classes": 10, "image_size": 32 * 2**20}),
    ),
    (
        "config mid-size lie",
        lambda h: h.update(config={"name": "vgg16", "num_classes": 10**7, "image_size": 32}),
    ),
    (
        "config bad types",
        lambda h: h.update(config={"name": ["vgg16"], "num_classes": "10", "image_size": None}),
    ),
    (
        "config unknown model",
        lambda h: h.update(config={"name": "nope", "num_classes": 10, "image_size": 32}),
    ),
    ("data_bytes lies", lambda h: h.update(data_bytes=h["data_bytes"] + 1)),
    ("crc lies", lambda h: h.update(data_crc32=h["data_crc32"] ^ 1)),
]


@pytest.mark.parametrize(("what", "lie"), _LIES, ids=[w for w, _ in _LIES])
def test_lying_header(tiny_file: bytes, tmp_path: Path, what: str, lie: Callable) -> None:
    header, data = _split(tiny_file)
    lie(header)
    path = tmp_path / "lie.ckpt"
    path.write_bytes(_join(header, data))
    # The header is not checksummed: a consistent lie (a seed a periodic pattern ignores, a
    # dtype of the same width) can load, and a skeleton makes ``config`` irrelevant; everything
    # else must be refused.
    benign = what in ("layer seed huge", "dtype changed") or what.startswith("config")
    _assert_clean_failure(path, must_fail=not benign)
    if what.startswith("config"):
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)  # no skeleton: the model is built from the lying config


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every (nested) key path of a JSON tree, the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    out = []
    for key, child in items:
        out.append((*prefix, key))
        out += _paths(child, (*prefix, key))
    return out


@FUZZ
@given(st.data())
def test_header_field_replaced_by_random_json(tiny_file: bytes, tmp_path: Path, data: st.DataObject) -> None:
    """Any one field of a valid header (config, meta, a tensor entry, a state reference, a
    layer's pattern or seed, ...) replaced by arbitrary JSON, CRC left valid."""
    header, blob = _split(tiny_file)
    path_ = data.draw(st.sampled_from(_paths(header)))
    parent = header
    for key in path_[:-1]:
        parent = parent[key]
    parent[path_[-1]] = data.draw(_JSON)
    path = tmp_path / "field.ckpt"
    path.write_bytes(_join(header, blob))
    _assert_clean_failure(path, must_fail=False)


@pytest.mark.parametrize(
    "raw",
    [
        MAGIC + struct.pack("<Q", 2**64 - 1) + b"{}",
        MAGIC + struct.pack("<Q", 64 * 1024 * 1024 + 1) + b"{}",
        _join({"format": "psconv-checkpoint"}, b"")[:16] + b"[" * 100_000,
        MAGIC + struct.pack("<Q", 300_000) + b"[" * 150_000 + b"]" * 150_000,
        MAGIC + struct.pack("<Q", 4) + b"\xff\xfe\x00\x01",  # not UTF-8
        MAGIC + struct.pack("<Q", 3) + b"NaN",
    ],
    ids=["length 2^64-1", "length over limit", "unterminated nesting", "deep nesting", "not utf8", "NaN"],
)
def test_hostile_header_lengths_and_nesting(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "h.ckpt"
    path.write_bytes(raw)
    _assert_clean_failure(path)


def test_not_a_file(tmp_path: Path) -> None:
    devices = [Path(p) for p in ("/dev/zero", "/dev/null") if Path(p).exists()]
    for path in (tmp_path, tmp_path / "missing.ckpt", *devices):  # /dev/zero: never read it all
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
        ("torch_zip.ckpt", lambda p: torch.save({"model": payload, "w": torch.ones(2)}, p)),
        (
            "torch_legacy.pt",
            lambda p: torch.save({"model": payload}, p, _use_new_zipfile_serialization=False),
        ),
        ("magic_then_pickle.ckpt", lambda p: p.write_bytes(MAGIC + pickle.dumps(payload))),
    ]:
        path = folder / name
        writer(path)
        files.append(path)
    assert not marker.exists()  # writing them ran nothing
    # The payload is real: an unguarded loader would run it (checked on a throwaway marker).
    probe = folder / "probe-marker"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()
    probe.unlink()
    return files


def test_hostile_code_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    for path in _hostile_files(tmp_path, marker):
        for reader in (
            psconv.load,
            lambda p: load_checkpoint(p, model=_tiny_dense()),
            read_header,
            deploy.summarize_checkpoint,
            deploy.load_for_inference,
        ):
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
    proc = _cli("inspect", str(path))
    assert proc.returncode == 2 and "not a psconv checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


# --------------------------------------------------------------------------------------------
# predict: corrupt, non-image and special files


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


@FUZZ
@given(
    st.binary(max_size=200),
    st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"GIF89a"]),
)
def test_load_image_random_bytes(tmp_path: Path, data: bytes, prefix: bytes) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(prefix + data)
    try:
        image = deploy.load_image(path, 32)
    except ValueError:
        return
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_special_image_files(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(good)
    raw = good.read_bytes()
    cases = {
        "truncated.jpg": raw[: len(raw) // 2],
        "empty.png": b"",
        "text.png": b"hello",
        "bomb.png": _png_header_only(100_000, 100_000),  # 10^10 pixels declared, 60 bytes stored
        "large.png": _png_header_only(10_000, 10_000),  # Pillow only warns: an error here
        "zero.png": _png_header_only(0, 0),
        "eps.jpg": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would block for ever: it must be skipped unopened
    (tmp_path / "folder.png").mkdir()
    for name in [*cases, "pipe.png", "folder.png", "missing.png"]:
        with pytest.raises(ValueError), warnings.catch_warnings():
            warnings.simplefilter("error")  # and nothing printed besides
            deploy.load_image(tmp_path / name, 32)
    assert deploy.load_image(good, 32).shape == (32, 32, 3)


def test_predict_with_special_files_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = psconv.create_model("vgg16", "PS1_P9")
    ckpt = psconv.save(model, tmp_path / "m.ckpt")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (64, 48), 128).save(images / "grey.png")
    (images / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    os.mkfifo(images / "pipe.jpg")
    (images / "sub").mkdir()
    (images / "sub" / "loop").symlink_to(images, target_is_directory=True)  # not followed
    before = _snapshot(tmp_path)
    assert main(["predict", "--checkpoint", str(ckpt), str(images), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [Path(p["file"]).name for p in out["predictions"]] == ["grey.png"]
    assert {Path(s["file"]).name for s in out["skipped"]} == {"bomb.png", "pipe.jpg"}
    assert _snapshot(tmp_path) == before  # predict writes nothing


# --------------------------------------------------------------------------------------------
# NaN and Inf


def test_nan_inf_policy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _tiny_dense().eval()
    # The raw network propagates NaN (documented): there is no silent clamping to hide it.
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 4, 4] = float("nan")
    assert torch.isnan(model(x)).any()
    vgg = psconv.create_model("vgg16", "PSD1_P16").eval()
    for bad in (float("nan"), float("inf")):
        x = torch.zeros(1, 3, 32, 32)
        x[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            deploy.classify(vgg, x)
    # A diverged checkpoint (NaN weights) is refused by predict and export, with one line.
    with torch.no_grad():
        vgg.classifier.weight[0, 0] = float("nan")
    ckpt = psconv.save(vgg, tmp_path / "nan.ckpt")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "a.png")]) == 2
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("NaN/Inf values in 'classifier.weight'") == 2 and not out.exists()
    # Finite but broken weights (a negative BatchNorm variance): NaN scores are reported per
    # image, never printed as probabilities.
    with torch.no_grad():
        vgg.classifier.weight[0, 0] = 0.0
        vgg.features[1].running_var.fill_(-1.0)
    ckpt = psconv.save(vgg, tmp_path / "broken.ckpt")
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "a.png"), "--json"]) == 2
    captured = capsys.readouterr()
    result = json.loads(captured.out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON output"))
    assert result["predictions"] == [] and "NaN/Inf scores" in result["skipped"][0]["reason"]
    assert "NaN/Inf scores" in captured.err
    with pytest.raises(ValueError, match="NaN/Inf scores"):
        deploy.classify(vgg, torch.zeros(1, 3, 32, 32))


# --------------------------------------------------------------------------------------------
# The command line


def _cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "psconv.cli", *argv],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=120,
    )


def _subcommands() -> dict[str, Any]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(sub.choices)


def _required(subparser: Any) -> list[Any]:
    return [a for a in subparser._actions if a.required or (not a.option_strings and a.dest != "help")]


def _bad_invocations(tmp: Path) -> list[list[str]]:
    """For every subcommand that exists: an unknown option, each required argument left out,
    and garbage where a file, number or choice is expected."""
    garbage = tmp / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    cases: list[list[str]] = [[], ["--no-such-flag"], ["nosuchcommand"]]
    for name, sp in _subcommands().items():
        cases.append([name, "--no-such-option-xyz"])
        required = _required(sp)
        filled: dict[str, list[str]] = {}
        for action in required:
            value = {"format": "onnx", "runs": str(tmp), "out": str(tmp / "new-output")}.get(
                action.dest, str(garbage)
            )
            filled[action.dest] = [*action.option_strings[:1], value] if action.option_strings else [value]
        for action in required:  # each required argument left out in turn
            cases.append([name, *[v for d, vs in filled.items() if d != action.dest for v in vs]])
        for action in sp._actions:
            if action.type in (int, float) and action.option_strings:
                cases.append(
                    [name, *[v for vs in filled.values() for v in vs], action.option_strings[0], "abc"]
                )
            if action.choices and action.option_strings and action.dest != "help":
                cases.append(
                    [name, *[v for vs in filled.values() for v in vs], action.option_strings[0], "zzz"]
                )
        if "checkpoint" in filled:
            for bad in (garbage, tmp, tmp / "missing.ckpt"):
                filled["checkpoint"][-1] = str(bad)
                cases.append([name, *[v for vs in filled.values() for v in vs]])
    for name, sp in _subcommands().items():  # an existing file (not a folder) where one is written
        filled = {a.dest: a for a in _required(sp)}
        # Only where --out is required: a command that runs without arguments does real work.
        if "out" in filled:
            argv = [name]
            for dest, action in filled.items():
                value = {"format": "torchscript", "runs": str(tmp), "out": str(garbage)}.get(
                    dest, str(garbage)
                )
                argv += [*action.option_strings[:1], value]
            cases.append(argv)
    cases += [
        ["predict", "--checkpoint", str(garbage), str(tmp), "--top-k", "0"],
        ["predict", "--checkpoint", str(garbage), str(tmp), "--top-k", "-3"],
        ["profile", "--pattern", "PS5_P4"],
        ["profile", "--model", "nope"],
        ["export", "--checkpoint", str(garbage), "--format", "onnx", "--out", str(tmp)],
    ]
    return cases


def test_every_subcommand_bad_arguments_in_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """All cases through ``main`` (an exception escaping it would be a traceback)."""
    decoys = _decoys(tmp_path)
    cases = _bad_invocations(tmp_path)
    before = _snapshot(tmp_path)
    assert {c[0] for c in cases if c} >= {"profile", "inspect", "predict", "export"}
    old = os.getcwd()
    os.chdir(tmp_path)  # relative default outputs would land among the decoys
    try:
        for argv in cases:
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code
            err = capsys.readouterr().err
            assert code == 2, (argv, err)
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and "error" in lines[0], (argv, err)
    finally:
        os.chdir(old)
    assert _snapshot(tmp_path) == before, "a failed command changed files it was not asked to write"
    assert decoys


def test_every_subcommand_bad_arguments_as_process(tmp_path: Path) -> None:
    """One bad invocation per subcommand through ``python -m psconv.cli`` (run concurrently):
    one line on stderr, exit code 2, no traceback."""
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"junk")
    procs = []
    for name, sp in _subcommands().items():
        # Missing required arguments where there are any; else an unknown option (a command
        # without required arguments would start real work).
        argv = [name] if _required(sp) else [name, "--no-such-option-xyz"]
        procs.append((argv, _popen(argv, tmp_path)))
    procs.append((["inspect", str(garbage)], _popen(["inspect", str(garbage)], tmp_path)))
    for argv, proc in procs:
        _, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (argv, err)
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)


def _popen(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "psconv.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )


def _decoys(folder: Path) -> list[Path]:
    """Files a careless command might clobber: outputs by common default names."""
    names = ["model.onnx", "model.pt", "out.onnx", "checkpoint.ckpt", "best.ckpt", "last.ckpt", "report.md"]
    files = []
    for name in names:
        path = folder / name
        path.write_bytes(f"decoy {name}".encode())
        files.append(path)
    return files


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for fn in files:
            path = Path(root) / fn
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@FUZZ
@given(
    st.sampled_from(["inspect", "predict", "export"]),
    st.lists(
        st.sampled_from(
            [
                "--checkpoint",
                "--format",
                "--out",
                "--top-k",
                "--json",
                "--force",
                "onnx",
                "torchscript",
                "GARBAGE",
                "DIR",
                "MISSING",
                "-1",
                "0",
                "abc",
                "--",
                "-",
                "",
                "\x00",
                "é",
            ]
        ),
        max_size=7,
    ),
)
def test_fuzzed_argv_never_crashes(tmp_path: Path, command: str, tokens: list[str]) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"junk")
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"keep")
    mapping = {"GARBAGE": str(garbage), "DIR": str(tmp_path), "MISSING": str(tmp_path / "nope")}
    argv = [command, *[mapping.get(t, t) for t in tokens]]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code in (0, 2)
    assert decoy.read_bytes() == b"keep"
