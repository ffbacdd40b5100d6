import struct
from pathlib import Path

import pytest
import torch

import psconv
from psconv.checkpoint import MAGIC, CheckpointError


@pytest.fixture(scope="module")
def vgg_sparse() -> torch.nn.Module:
    torch.manual_seed(0)
    model = psconv.create_model("vgg16", "PSD1_P16")
    # non-trivial BN statistics so a reload must restore buffers too
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    return model.eval()


def test_round_trip_identical_outputs_and_compact_size(vgg_sparse, tmp_path: Path) -> None:
    path = psconv.save(vgg_sparse, tmp_path / "m.ckpt", accuracy=91.5)
    stored = sum(t.numel() for t in vgg_sparse.state_dict().values() if t.is_floating_point())
    size = path.stat().st_size
    assert size <= 1.02 * 4 * stored + 64 * 1024
    loaded = psconv.load(path)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded(x), vgg_sparse(x))
    assert psconv.read_header(path)["meta"] == {"accuracy": 91.5}
    # densify runs oneDNN's dense conv, the sparse model may run the fast kernel: same up to rounding
    torch.testing.assert_close(psconv.densify(vgg_sparse)(x), vgg_sparse(x), rtol=1e-4, atol=1e-5)


def test_no_index_stored(vgg_sparse, tmp_path: Path) -> None:
    header = psconv.read_header(psconv.save(vgg_sparse, tmp_path / "m.ckpt"))
    names = set(header["state"])
    assert not any("mask" in n or "index" in n for n in names)
    assert header["sparse_layers"]["features.3"]["pattern"] == "PSD1_P16"


def test_extra_state_round_trips(tmp_path: Path) -> None:
    model = psconv.create_model("resnet18", "PS4_P4")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    extra = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 3, "pair": (1, 2.5)}
    ckpt = psconv.load_checkpoint(psconv.save(model, tmp_path / "r.ckpt", extra=extra))
    opt2 = torch.optim.SGD(ckpt.model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt.extra["optimizer"])
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert torch.equal(ckpt.extra["rng"], torch.get_rng_state())
    assert ckpt.extra["epoch"] == 3 and ckpt.extra["pair"] == (1, 2.5)


def test_custom_model_needs_skeleton(tmp_path: Path) -> None:
    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1))

    model = psconv.sparsify(net(), "pSC2", seed=3)
    path = psconv.save(model, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match="pass a skeleton"):
        psconv.load(path)
    loaded = psconv.load(path, model=net())
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(loaded(x), model(x))


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch) -> None:
    model = psconv.create_model("resnet18", "PS1_P9")
    path = psconv.save(model, tmp_path / "a.ckpt")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        psconv.save(psconv.create_model("resnet18", "dense"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("c") / "s.ckpt"
    return psconv.save(psconv.create_model("resnet18", "PS1_P9"), path).read_bytes()


def _expect_error(tmp_path: Path, raw: bytes, fragment: str) -> None:
    path = tmp_path / "bad.ckpt"
    path.write_bytes(raw)
    with pytest.raises(CheckpointError) as info:
        psconv.load(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_truncated_file(small_ckpt, tmp_path) -> None:
    for cut in (3, 12, 200, len(small_ckpt) // 2, len(small_ckpt) - 1):
        _expect_error(tmp_path, small_ckpt[:cut], "")


def test_corrupt_data_byte(small_ckpt, tmp_path) -> None:
    raw = bytearray(small_ckpt)
    raw[-100] ^= 0xFF
    _expect_error(tmp_path, bytes(raw), "checksum")


def test_foreign_file(tmp_path) -> None:
    _expect_error(tmp_path, b"PK\x03\x04 this is a zip, not ours" * 4, "not a psconv checkpoint")


def test_torch_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "pickle.pt"
    torch.save({"a": torch.ones(2)}, path)
    _expect_error(tmp_path, path.read_bytes(), "not a psconv checkpoint")


def test_wrong_version(small_ckpt, tmp_path) -> None:
    _expect_error(tmp_path, MAGIC[:-1] + b"\x09" + small_ckpt[len(MAGIC) :], "version 9")


def test_header_from_other_model(small_ckpt, tmp_path) -> None:
    other = psconv.save(psconv.create_model("vgg16", "PS1_P9"), tmp_path / "v.ckpt").read_bytes()
    head_len = struct.unpack_from("<Q", other, 8)[0]
    # vgg header with resnet data: sizes disagree, refused before any tensor is built
    _expect_error(tmp_path, other[: 16 + head_len] + small_ckpt[-1000:], "")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        psconv.load(tmp_path / "nope.ckpt")


def test_relabelled_dtype_is_refused(small_ckpt, tmp_path) -> None:
    head_len = struct.unpack_from("<Q", small_ckpt, 8)[0]
    header = small_ckpt[16 : 16 + head_len]
    # relabel every float32 tensor as int32: same sizes, so only a dtype check can notice
    forged = header.replace(b'"dtype":"float32"', b'"dtype":"int32"')
    assert forged != header
    prefix = MAGIC + struct.pack("<Q", len(forged))
    _expect_error(tmp_path, prefix + forged + small_ckpt[16 + head_len :], "expects torch.float32")
