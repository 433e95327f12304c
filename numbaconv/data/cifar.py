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

import bz2
import gzip
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
from ..files import (DeferredInterrupt, LockedError, check_writable_folder, exclusive_lock, is_disk_full,
                     remove_stale_temporaries, temp_name)
from .store import DatasetError, Split, check_split, write_h5

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_NAME = "cifar-10-python.tar.gz"
OFFICIAL_SIZE = 170498071  # bytes
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


def _decompressing(raw: io.RawIOBase):
    """A reader of the tar stream inside ``raw``: gzip, bzip2 and xz are recognised by their magic
    bytes and decompressed with the modules that check the stream's own checksums (gzip: CRC-32 and
    length trailer) when it is read to its end; anything else is read as a plain tar."""
    buffered = io.BufferedReader(raw, _CHUNK)
    head = buffered.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(buffered)
    if head.startswith(b"\xfd7zXZ\x00") and _LZMA_ERRORS:
        return lzma.LZMAFile(buffered)
    return buffered


def read_archive(path: Path, progress: Progress | None = None, want_md5: bool = False):
    """Parse a (possibly compressed) tar archive; returns (batches, names, sha256, md5 or None).

    The compressed stream is read to its end, so a flipped bit (CRC) or a cut file (missing
    trailer) is an error here, before anything is written."""
    where = str(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"cannot read {where}: {e.strerror}") from None
    with f:
        reader = _HashingReader(f, os.fstat(f.fileno()).st_size, progress, want_md5)
        try:
            stream = _decompressing(reader)
            # Stream mode ("r|"): one sequential pass, no seeking back through a compressed stream.
            # Opening reads the first header, so a file that is no (compressed) tar fails here.
            tar = tarfile.open(fileobj=stream, mode="r|")
        except (tarfile.TarError, EOFError, zlib.error, OSError, *_LZMA_ERRORS) as e:
            raise DatasetError(f"{where} is not a tar archive (.tar, .tar.gz, .tar.bz2 or .tar.xz): {e}") from None
        try:
            with tar:
                batches, names = _collect(_tar_members(tar, where), where)
            while stream.read(_CHUNK):  # tar stops at its end marker; the checksums are at the very end
                pass
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
    for p in files:
        if p.stat().st_size > MAX_MEMBER_BYTES:
            raise DatasetError(f"{p} is {p.stat().st_size} bytes, too large for a CIFAR-10 batch")
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


def offline_hint() -> str:
    return (f"without internet access here, download {OFFICIAL_NAME} on another machine ({OFFICIAL_URL}) "
            f"and import it with --source PATH")


def download(url: str, dest_dir: Path, progress: Progress | None = None) -> tuple[Path, str, str]:
    """Download ``url`` to a temporary file in ``dest_dir``; returns (path, md5, sha256).

    The caller deletes the file. On any failure the partial file is removed."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(dest_dir / (posixpath.basename(urllib.parse.urlsplit(url).path) or "download"))
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
                raise DatasetError(f"download of {url} failed: HTTP {e.code} {e.reason}; {offline_hint()}") from None
            except urllib.error.URLError as e:
                raise DatasetError(f"cannot download {url}: {e.reason}; {offline_hint()}") from None
            except (OSError, http.client.HTTPException) as e:  # timeouts, resets, IncompleteRead, a full disk
                if is_disk_full(e):
                    raise DatasetError(f"no space left in {dest_dir} for the download of {url}; free some "
                                       f"space or choose another --out") from None
                raise DatasetError(f"download of {url} was interrupted: {type(e).__name__}: {e}; "
                                   f"{offline_hint()}") from None
            if total is not None and done != total:
                raise DatasetError(f"download of {url} is truncated: got {done} of {total} bytes; {offline_hint()}")
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
    extracted ``cifar-10-batches-py`` folder is read in place (a local archive whose MD5 is the
    official one is recorded as verified; one named and sized like the official archive but with
    another MD5 is refused as corrupt). An archive without ``test_batch`` gives a train-only file
    (said in ``notes``). Any problem raises one ``DatasetError``; nothing is left behind.

    The output is locked for the import (a second import to it fails at once), stale temporaries
    of killed imports in its folder are removed, and Ctrl-C is held until a safe point, where it
    raises ``KeyboardInterrupt`` with no output written.
    """
    from . import data_home

    out = Path(out) if out is not None else data_home() / "cifar10.h5"
    created: list = []
    try:
        if out.is_dir():
            raise DatasetError(f"--out {out} is a folder; give a file name such as {out / 'cifar10.h5'}")
        if md5 is not None and (len(md5) != 32 or any(c not in "0123456789abcdefABCDEF" for c in md5)):
            raise DatasetError(f"--md5 must be 32 hexadecimal digits, got {md5!r}")
        if source is not None and "://" not in str(source) and out.exists() and \
                Path(source).expanduser().resolve() == out.resolve():
            raise DatasetError(f"--out {out} is the --source itself; write the HDF5 file elsewhere")
        check_writable_folder(out.parent, "output folder")
        created = _make_folders(out.parent)
        with exclusive_lock(out, f"--out {out}"), DeferredInterrupt() as guard:
            remove_stale_temporaries(out.parent)

            def checked(task, done, total):  # every progress call is a safe point for Ctrl-C
                guard.check()
                if progress:
                    progress(task, done, total)

            return _import(source, out, md5, overwrite, checked, guard.check)
    except BaseException as e:
        for folder in reversed(created):  # folders this import made, if they stayed empty
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(e, OSError):  # what the specific handlers did not explain: permissions, full disk, ...
            where = f"{e.filename}: " if e.filename else ""
            if is_disk_full(e):
                raise DatasetError(f"{where}no space left on the device; free some space or choose another "
                                   f"--out") from None
            raise DatasetError(f"{where}{e.strerror or e}") from None
        if isinstance(e, ValueError) and not isinstance(e, DatasetError):  # files.py: locked, not writable
            raise DatasetError(str(e)) from None
        raise


def _make_folders(folder: Path) -> list:
    """mkdir -p ``folder``; returns the folders it created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    missing.reverse()
    for m in missing:
        m.mkdir(exist_ok=True)
    return missing


def _import(source, out: Path, md5, overwrite, progress: Progress, check) -> ImportResult:
    start = time.perf_counter()
    if out.exists() and not overwrite:
        raise DatasetError(f"{out} already exists (use --force to replace it)")

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
            batches, names, sha, got_md5 = read_archive(path, progress, want_md5=True)
            if md5 is not None:
                _check_md5(got_md5, md5, str(path))
                verified = md5.lower()
            elif got_md5 == OFFICIAL_MD5:
                verified = OFFICIAL_MD5
            elif path.name == OFFICIAL_NAME and path.stat().st_size == OFFICIAL_SIZE:
                raise DatasetError(f"{path} has the official archive's name and size but not its MD5 "
                                   f"({got_md5}, expected {OFFICIAL_MD5}): it is corrupt; download it again")
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
        size = write_h5(out, splits, names, attrs, progress=lambda d, t: progress("write", d, t), check=check)
    except OSError as e:
        if is_disk_full(e):
            need = sum(s.images.nbytes + s.labels.nbytes for s in splits.values())
            raise DatasetError(f"no space left to write {out} (it needs about {need / 2**20:,.0f} MiB in "
                               f"{out.parent}); free some space or choose another --out") from None
        raise DatasetError(f"cannot write {out}: {e.strerror or e}") from None
    return ImportResult(out, source, kind, sha, verified, len(train.images),
                        len(splits["test"].images) if "test" in splits else 0, size,
                        time.perf_counter() - start, notes)
