"""CIFAR-10 (python version) -> our HDF5 layout, from an archive, a folder or a URL.

Safety: the batches are pickles. They are read by ``safe_pickle.loads``, which never
builds a NumPy object from the stream: the NumPy globals resolve to inert stand-ins that
accept only plain integer arrays, and the arrays are made afterwards by ``np.frombuffer``
once their sizes check out; any other global or object-creating opcode is refused. Tar
members are read into memory (``extractfile``), never extracted to disk, so member names
such as ``../../x`` cannot write anywhere. Compressed archives are decompressed to their
end, so the gzip CRC-32 and length trailer (or the bzip2 / xz checks) are verified before
anything is written. Output goes through ``store.write_h5`` (temporary file + rename) under
an exclusive lock on the output, so a failure or Ctrl-C leaves nothing that looks like a
finished dataset.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import os
import posixpath
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from . import safe_pickle
from .safe_pickle import RefusedPickle
from .store import DatasetError, Split, check_split, temp_path, write_h5

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
FOLDER = "cifar-10-batches-py"
# A real batch pickle is ~31 MB; anything far larger is refused before it is read into memory.
MAX_MEMBER_BYTES = 256 * 2**20
_CHUNK = 2**20

try:
    import lzma
    _LZMA_ERRORS: tuple = (lzma.LZMAError,)
except ImportError:  # Python built without lzma: tarfile cannot read .xz either
    _LZMA_ERRORS = ()

# progress(task, done, total): task is "download", "read" or "write"; total may be None.
Progress = Callable[[str, int, "int | None"], None]


class ImportResult(NamedTuple):
    path: Path
    source: str
    source_kind: str  # "url", "archive" or "folder"
    sha256: str
    md5_verified: str | None
    num_train: int
    num_test: int
    size_bytes: int
    seconds: float
    notes: list


# --------------------------------------------------------------------------- restricted unpickling

def safe_loads(data: bytes, where: str):
    """Unpickle ``data`` with ``safe_pickle.loads`` (inert stand-ins, arrays by np.frombuffer)."""
    try:
        return safe_pickle.loads(data)
    except RefusedPickle as e:
        raise DatasetError(f"{where}: {e}") from None
    except Exception as e:  # truncated or garbled pickles fail in many ways
        raise DatasetError(f"{where} is not a valid CIFAR-10 pickle ({type(e).__name__}: {e})") from None


def _get(d: dict, key: str):
    return d.get(key.encode(), d.get(key))


def parse_batch(data: bytes, where: str) -> Split:
    """One data/test batch: dict with b'data' uint8 (n, 3072) and b'labels' (n ints in 0..9)."""
    d = safe_loads(data, where)
    if not isinstance(d, dict) or _get(d, "data") is None or _get(d, "labels") is None:
        raise DatasetError(f"{where} is not a CIFAR-10 batch (expected a dict with 'data' and 'labels')")
    x, labels = _get(d, "data"), _get(d, "labels")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{where}: 'data' must be a uint8 array of shape (n, 3072), got "
                           f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if isinstance(labels, (list, tuple)) and all(type(v) is int for v in labels):
        if labels and not -2**63 <= min(labels) <= max(labels) < 2**63:
            raise DatasetError(f"{where}: 'labels' must be in [0, {len(CLASS_NAMES)}), got a value beyond 64 bits")
        y = np.array(labels, dtype=np.int64).reshape(-1)
    elif isinstance(labels, np.ndarray) and labels.ndim == 1:  # an integer array (safe_pickle allows no other)
        y = labels
    else:
        raise DatasetError(f"{where}: 'labels' must be a flat list of integers, got {type(labels).__name__}")
    # Rows are 1024 red, 1024 green, 1024 blue values, each a 32x32 image in row-major order.
    return check_split(where, x.reshape(-1, 3, 32, 32), y, len(CLASS_NAMES), where)


def parse_meta(data: bytes, where: str) -> list:
    d = safe_loads(data, where)
    names = _get(d, "label_names") if isinstance(d, dict) else None
    if not isinstance(names, list) or len(names) != len(CLASS_NAMES) or \
            not all(isinstance(n, (bytes, str)) for n in names):
        raise DatasetError(f"{where}: expected 'label_names', a list of {len(CLASS_NAMES)} names")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


# --------------------------------------------------------------------------- reading sources

class _HashingReader(io.RawIOBase):
    """Wraps a binary file: hashes (SHA-256, and MD5 when asked) and reports progress as it is read,
    so the archive is read once for checksum, hash and content."""

    def __init__(self, f, total: int, progress: Progress | None, want_md5: bool):
        self._f, self.total, self._progress = f, total, progress
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
        self.done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            chunk = memoryview(b)[:n]
            self.sha256.update(chunk)
            if self.md5 is not None:
                self.md5.update(chunk)
            self.done += n
            if self._progress:
                self._progress("read", self.done, self.total)
        return n

    def drain(self) -> None:
        """Read to the end so the hashes cover the whole file (tar stops at its end marker)."""
        buf = bytearray(_CHUNK)
        while self.readinto(buf):
            pass


def _collect(members, where: str) -> tuple[dict, list | None]:
    """From (name, read_bytes) pairs, parse the batches we know; returns ({batch: Split}, names)."""
    batches: dict = {}
    names = None
    for name, read in members:
        base = posixpath.basename(name)
        if base not in TRAIN_BATCHES + (TEST_BATCH, META):
            continue
        if base in batches or (base == META and names is not None):
            raise DatasetError(f"{where} holds {base} twice")
        label = f"{where}: {name}"
        if base == META:
            names = parse_meta(read(), label)
        else:
            batches[base] = parse_batch(read(), label)
    return batches, names


def _tar_members(tar: tarfile.TarFile, where: str):
    for m in tar:
        if not m.isfile():  # links, devices and folders are never followed or created
            continue
        base = posixpath.basename(m.name)
        if base in TRAIN_BATCHES + (TEST_BATCH, META) and m.size > MAX_MEMBER_BYTES:
            raise DatasetError(f"{where}: member {m.name} is {m.size} bytes, too large for a CIFAR-10 batch")
        yield m.name, (lambda m=m: tar.extractfile(m).read())


def read_archive(path: Path, progress: Progress | None = None, want_md5: bool = False):
    """Parse a (possibly compressed) tar archive; returns (batches, names, sha256, md5 or None)."""
    where = str(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"cannot read {where}: {e.strerror}") from None
    with f:
        reader = _HashingReader(f, os.fstat(f.fileno()).st_size, progress, want_md5)
        try:
            # Stream mode ("r|*"): one sequential pass, no seeking back through a gzip stream.
            # Opening reads the first header, so a file that is no (compressed) tar fails here.
            tar = tarfile.open(fileobj=reader, mode="r|*")
        except (tarfile.TarError, EOFError, zlib.error, OSError, *_LZMA_ERRORS) as e:
            raise DatasetError(f"{where} is not a tar archive (.tar, .tar.gz, .tar.bz2 or .tar.xz): {e}") from None
        try:
            with tar:
                batches, names = _collect(_tar_members(tar, where), where)
            reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, OSError, *_LZMA_ERRORS) as e:
            raise DatasetError(f"{where} is truncated or corrupt: {e}") from None
    md5 = reader.md5.hexdigest() if reader.md5 is not None else None
    return batches, names, reader.sha256.hexdigest(), md5


def read_folder(path: Path, progress: Progress | None = None):
    """Parse an extracted ``cifar-10-batches-py`` folder; returns (batches, names, sha256).

    The SHA-256 of a folder is that of its batch files concatenated in the order
    batches.meta, data_batch_1..5, test_batch (those present)."""
    if (path / FOLDER).is_dir():
        path = path / FOLDER
    files = [path / n for n in (META,) + TRAIN_BATCHES + (TEST_BATCH,) if (path / n).is_file()]
    total = sum(p.stat().st_size for p in files)
    sha = hashlib.sha256()
    done = 0

    def reader(p: Path):
        def read():
            nonlocal done
            data = p.read_bytes()
            sha.update(data)
            done += len(data)
            if progress:
                progress("read", done, total)
            return data
        return read

    batches, names = _collect(((p.name, reader(p)) for p in files), str(path))
    return batches, names, sha.hexdigest()


def download(url: str, dest_dir: Path, progress: Progress | None = None) -> tuple[Path, str, str]:
    """Download ``url`` to a temporary file in ``dest_dir``; returns (path, md5, sha256).

    The caller deletes the file. On any failure the partial file is removed."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest_dir / posixpath.basename(urllib.parse.urlsplit(url).path or "download"))
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    try:
        with open(tmp, "xb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    done = 0
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        md5.update(chunk)
                        sha.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress("download", done, total)
            except urllib.error.HTTPError as e:
                raise DatasetError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
            except urllib.error.URLError as e:
                raise DatasetError(f"cannot download {url}: {e.reason}") from None
            except (OSError, http.client.HTTPException) as e:  # timeouts, resets, IncompleteRead
                raise DatasetError(f"download of {url} was interrupted: {type(e).__name__}: {e}") from None
            if total is not None and done != total:
                raise DatasetError(f"download of {url} is truncated: got {done} of {total} bytes")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), md5.hexdigest(), sha.hexdigest()


# --------------------------------------------------------------------------- the import

def _check_md5(actual: str, expected: str, what: str) -> None:
    if actual.lower() != expected.lower():
        raise DatasetError(f"checksum mismatch for {what}: MD5 is {actual}, expected {expected.lower()}")


def import_cifar10(source: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                   md5: str | None = None, overwrite: bool = False,
                   progress: Progress | None = None) -> ImportResult:
    """Convert CIFAR-10 (python version) to ``out`` (default ``<data_home>/cifar10.h5``).

    ``source``: None downloads the official archive and checks its MD5; an ``http(s)://`` URL
    is downloaded (MD5 checked only when ``md5`` is given); a local ``.tar[.gz]`` archive or an
    extracted ``cifar-10-batches-py`` folder is read in place. An archive without ``test_batch``
    gives a train-only file (said in ``notes``). Any problem raises one ``DatasetError``.
    """
    try:
        return _import(source, out, md5, overwrite, progress)
    except OSError as e:  # what the specific handlers did not explain: permissions, full disk, ...
        where = f"{e.filename}: " if e.filename else ""
        raise DatasetError(f"{where}{e.strerror or e}") from None


def _import(source, out, md5, overwrite, progress) -> ImportResult:
    from . import data_home

    start = time.perf_counter()
    out = Path(out) if out is not None else data_home() / "cifar10.h5"
    if out.is_dir():
        raise DatasetError(f"--out {out} is a folder; give a file name such as {out / 'cifar10.h5'}")
    if out.exists() and not overwrite:
        raise DatasetError(f"{out} already exists (use --force to replace it)")
    if md5 is not None and (len(md5) != 32 or any(c not in "0123456789abcdefABCDEF" for c in md5)):
        raise DatasetError(f"--md5 must be 32 hexadecimal digits, got {md5!r}")

    notes: list = []
    if source is None:
        source, md5 = OFFICIAL_URL, (md5 or OFFICIAL_MD5)
    source = str(source)
    scheme = urllib.parse.urlsplit(source).scheme.lower() if "://" in source else ""
    verified = None
    if scheme:
        if scheme not in ("http", "https"):
            raise DatasetError(f"unsupported URL scheme {scheme!r} in {source}; use http(s):// or a local path")
        kind = "url"
        tmp, got_md5, sha = download(source, out.parent, progress)
        try:
            if md5 is not None:
                _check_md5(got_md5, md5, source)
                verified = md5.lower()
            batches, names, _, _ = read_archive(tmp, progress)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            if md5 is not None:
                raise DatasetError(f"--md5 checks an archive or a download, but {path} is a folder")
            kind = "folder"
            batches, names, sha = read_folder(path, progress)
        elif path.is_file():
            kind = "archive"
            batches, names, sha, got_md5 = read_archive(path, progress, want_md5=md5 is not None)
            if md5 is not None:
                _check_md5(got_md5, md5, str(path))
                verified = md5.lower()
        else:
            raise DatasetError(f"source {source} does not exist (give an archive, a cifar-10-batches-py "
                               f"folder or an http(s) URL)")
        source = str(path.resolve())

    missing = [b for b in TRAIN_BATCHES if b not in batches]
    if missing:
        raise DatasetError(f"{source} is missing {', '.join(missing)} "
                           f"(CIFAR-10 has data_batch_1 ... data_batch_5{' and test_batch' if kind != 'folder' else ''})")
    if names is None:
        names = list(CLASS_NAMES)
        notes.append(f"no {META}: using the standard CIFAR-10 class names")
    train = Split(np.concatenate([batches[b].images for b in TRAIN_BATCHES]),
                  np.concatenate([batches[b].labels for b in TRAIN_BATCHES]))
    splits = {"train": train}
    if TEST_BATCH in batches:
        splits["test"] = batches[TEST_BATCH]
    else:
        notes.append("no test_batch in the source: train split only")

    attrs = {"source": source, "source_kind": kind, "source_sha256": sha}
    if verified:
        attrs["source_md5"] = verified
    try:
        size = write_h5(out, splits, names, attrs,
                        progress=(lambda d, t: progress("write", d, t)) if progress else None)
    except OSError as e:
        raise DatasetError(f"cannot write {out}: {e.strerror or e}") from None
    return ImportResult(out, source, kind, sha, verified, len(train.images),
                        len(splits["test"].images) if "test" in splits else 0, size,
                        time.perf_counter() - start, notes)
