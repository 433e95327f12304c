"""CIFAR-10 import (archive, folder, URL) -> HDF5, the restricted unpickler, corrupt inputs,
loading the result, and the `numbaconv datasets` commands. Tiny archives are built here; the only
network is an http.server on 127.0.0.1."""
import functools
import hashlib
import http.server
import io
import os
import pickle
import pickletools
import struct
import tarfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from numbaconv.data import DatasetError, data_home, load_dataset
from numbaconv.data import cifar
from numbaconv.data.cifar import CLASS_NAMES, import_cifar10, safe_loads
from numbaconv.data.store import read_h5
from numbaconv_cli.main import app

PER_BATCH = 4
runner = CliRunner()


# ----------------------------------------------------------------------------- tiny CIFAR sources

def _batch(index: int, n: int = PER_BATCH) -> dict:
    """A batch in the official format: Python-2-style bytes keys, data uint8 (n, 3072), labels a list."""
    rng = np.random.default_rng(index)
    return {b"batch_label": f"batch {index}".encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{index}_{i}.png".encode() for i in range(n)]}


class _Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2 did for the official archive: protocol 2, bytes as (SHORT_)BINSTRING
    and NumPy's reconstructor under its old module name numpy.core.multiarray."""

    def save_bytes(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _dumps(obj, style: int) -> bytes:
    """style 0: Python 2 (as the official archive); 1: Python 3 protocol 4 (as the shared JPEG copy);
    2: Python 3 protocol 2 (bytes through _codecs.encode)."""
    return py2_dumps(obj) if style == 0 else pickle.dumps(obj, protocol=4 if style == 1 else 2)


def _members(with_test=True, drop=(), extra=None) -> dict:
    m = {f"data_batch_{i}": _dumps(_batch(i), i % 3) for i in range(1, 6)}
    if with_test:
        m["test_batch"] = _dumps(_batch(99), 0)
    m["batches.meta"] = py2_dumps({b"label_names": [n.encode() for n in CLASS_NAMES],
                                   b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072})
    m["readme.html"] = b"<html>ignored</html>"
    for name in drop:
        del m[name]
    m.update(extra or {})
    return m


def make_archive(path: Path, members: dict, prefix="cifar-10-batches-py/", mode="w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_folder(path: Path, members: dict) -> Path:
    path.mkdir(parents=True)
    for name, data in members.items():
        (path / name).write_bytes(data)
    return path


def expected_train():
    batches = [_batch(i) for i in range(1, 6)]
    x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([b[b"labels"] for b in batches])
    return x, y


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def leftovers(folder: Path) -> list:
    """Files in ``folder`` other than the sources the test put there (none may be half-written)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("src"))


@pytest.fixture
def archive(tmp_path):
    return make_archive(tmp_path / "src.tar.gz", _members())


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


# ----------------------------------------------------------------------------- a local HTTP server

class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path == "/truncated.tar.gz":  # announces more bytes than it sends, then hangs up
            body = b"\x1f\x8b" + b"x" * 100
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1 (random port) from a thread; yields (base_url, www folder)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# ----------------------------------------------------------------------------- happy paths

def test_archive_to_hdf5_layout_and_attributes(archive, out_dir):
    out = out_dir / "c.h5"
    r = import_cifar10(archive, out)
    assert (r.num_train, r.num_test, r.source_kind, r.notes) == (5 * PER_BATCH, PER_BATCH, "archive", [])
    x, y = expected_train()
    with h5py.File(out, "r") as f:
        assert f["train/images"].dtype == np.uint8 and f["train/images"].shape == (5 * PER_BATCH, 3, 32, 32)
        assert np.array_equal(f["train/images"][()], x) and np.array_equal(f["train/labels"][()], y)
        test = _batch(99)
        assert np.array_equal(f["test/images"][()], test[b"data"].reshape(-1, 3, 32, 32))
        assert list(f.attrs["class_names"]) == CLASS_NAMES
        assert f.attrs["source"] == str(archive.resolve()) and f.attrs["source_sha256"] == sha256(archive)
        assert f.attrs["source_kind"] == "archive" and "source_md5" not in f.attrs
    # Channel-major rows: the first 1024 values are the red plane, row by row.
    assert np.array_equal(x[0, 0].ravel(), _batch(1)[b"data"][0, :1024])
    assert leftovers(out_dir) == ["c.h5"]


def test_folder_and_plain_tar_give_the_same_images(tmp_path, out_dir):
    make_folder(tmp_path / "src" / "cifar-10-batches-py", _members())
    r1 = import_cifar10(tmp_path / "src", out_dir / "folder.h5")  # the parent of cifar-10-batches-py works too
    r2 = import_cifar10(make_archive(tmp_path / "src.tar", _members(), mode="w"), out_dir / "tar.h5")
    assert r1.source_kind == "folder" and r2.source_kind == "archive"
    a, b = read_h5(out_dir / "folder.h5"), read_h5(out_dir / "tar.h5")
    for split in ("train", "test"):
        assert np.array_equal(a.splits[split].images, b.splits[split].images)
        assert np.array_equal(a.splits[split].labels, b.splits[split].labels)


def test_archive_without_test_batch_gives_train_only(tmp_path, out_dir):
    src = make_archive(tmp_path / "src.tgz", _members(with_test=False))
    r = import_cifar10(src, out_dir / "c.h5")
    assert r.num_test == 0 and any("train split only" in n for n in r.notes)
    with h5py.File(out_dir / "c.h5", "r") as f:
        assert "test" not in f and list(f.attrs["splits"]) == ["train"]
    ds = load_dataset(str(out_dir / "c.h5"), num_val=5)
    assert ds.X_test is None and ds.y_test is None and ds.X_train.shape == (15, 3, 32, 32)


def test_md5_checked_for_a_local_archive_when_asked(archive, out_dir):
    r = import_cifar10(archive, out_dir / "ok.h5", md5=md5(archive).upper())
    assert r.md5_verified == md5(archive)
    with h5py.File(out_dir / "ok.h5", "r") as f:
        assert f.attrs["source_md5"] == md5(archive)
    with pytest.raises(DatasetError, match=r"checksum mismatch for .*src.tar.gz: MD5 is [0-9a-f]{32}, expected 0{32}"):
        import_cifar10(archive, out_dir / "bad.h5", md5="0" * 32)
    assert leftovers(out_dir) == ["ok.h5"]


def test_load_dataset_from_imported_file(archive, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("NUMBACONV_DATA", str(home))
    assert data_home() == home
    import_cifar10(archive)  # default output: <data home>/cifar10.h5
    ds = load_dataset("cifar10", num_val=4, normalize_std=True, dtype=np.float64)
    x, y = expected_train()
    assert ds.class_names == CLASS_NAMES and ds.source == str(home / "cifar10.h5")
    assert np.array_equal(ds.y_val, y[-4:]) and np.array_equal(ds.y_train, y[:-4])
    train = x[:-4] / 255.0
    np.testing.assert_allclose(ds.mean, train.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(ds.std, train.std(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(ds.X_val, (x[-4:] / 255.0 - ds.mean[:, None, None]) / ds.std[:, None, None])
    assert ds.X_test.shape == (PER_BATCH, 3, 32, 32) and ds.y_test.dtype == np.int64
    with pytest.raises(ValueError, match=r"num_val=20 leaves no training images: .* has 20 training images"):
        load_dataset("cifar10", num_val=20)


def test_default_data_home_is_the_checkout(monkeypatch):
    monkeypatch.delenv("NUMBACONV_DATA", raising=False)
    assert data_home() == Path(__file__).resolve().parents[1] / "datasets"


# ----------------------------------------------------------------------------- downloads

def test_url_download_converts_and_cleans_up(archive, server, out_dir):
    base, www = server
    (www / "c.tar.gz").write_bytes(archive.read_bytes())
    r = import_cifar10(f"{base}/c.tar.gz", out_dir / "c.h5", md5=md5(archive))
    assert r.source_kind == "url" and r.sha256 == sha256(archive) and r.num_train == 5 * PER_BATCH
    with h5py.File(out_dir / "c.h5", "r") as f:
        assert f.attrs["source"] == f"{base}/c.tar.gz" and f.attrs["source_sha256"] == sha256(archive)
    assert leftovers(out_dir) == ["c.h5"]  # the downloaded archive is gone


def test_default_source_is_the_official_download_with_md5(archive, server, out_dir, monkeypatch):
    base, www = server
    (www / "cifar-10-python.tar.gz").write_bytes(archive.read_bytes())
    monkeypatch.setattr(cifar, "OFFICIAL_URL", f"{base}/cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "OFFICIAL_MD5", "c58f30108f718f92721af3b95e74349a")  # the real one: mismatch
    with pytest.raises(DatasetError, match=r"checksum mismatch .*expected c58f30108f718f92721af3b95e74349a"):
        import_cifar10(None, out_dir / "c.h5")
    assert leftovers(out_dir) == []
    monkeypatch.setattr(cifar, "OFFICIAL_MD5", md5(archive))
    r = import_cifar10(None, out_dir / "c.h5")
    assert r.md5_verified == md5(archive) and r.num_test == PER_BATCH


@pytest.mark.parametrize("path, match", [
    ("/missing.tar.gz", r"download of http://127.0.0.1:\d+/missing.tar.gz failed: HTTP 404"),
    ("/truncated.tar.gz", r"(truncated: got 102 of 5000 bytes|was interrupted)"),
])
def test_failed_downloads_leave_nothing(server, out_dir, path, match):
    base, _ = server
    with pytest.raises(DatasetError, match=match):
        import_cifar10(base + path, out_dir / "c.h5")
    assert leftovers(out_dir) == []


def test_unreachable_host_and_bad_scheme(out_dir):
    with pytest.raises(DatasetError, match=r"cannot download http://127.0.0.1:9/x.tar.gz: "):
        import_cifar10("http://127.0.0.1:9/x.tar.gz", out_dir / "c.h5")  # port 9 (discard): refused
    with pytest.raises(DatasetError, match=r"unsupported URL scheme 'ftp' in ftp://x/y; use http\(s\)://"):
        import_cifar10("ftp://x/y", out_dir / "c.h5")
    assert leftovers(out_dir) == []


# ----------------------------------------------------------------------------- bad input

class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path, out_dir):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(DatasetError, match=r"refused pickle global (posix|nt)\.system \(only NumPy integer arrays"):
        safe_loads(evil, "x")
    src = make_archive(tmp_path / "src.tar.gz", _members(extra={"data_batch_3": evil}))
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py/data_batch_3: refused pickle global"):
        import_cifar10(src, out_dir / "c.h5")
    assert not marker.exists() and leftovers(out_dir) == []
    # What the format needs still loads: arrays, lists, dicts, bytes, numbers (numpy scalars too).
    ok = {b"a": np.arange(3, dtype=np.uint8), b"l": [1, 2.5, b"x", "s", (1,)], b"n": np.int64(4)}
    back = safe_loads(pickle.dumps(ok, protocol=2), "ok")
    assert np.array_equal(back[b"a"], ok[b"a"]) and back[b"l"] == ok[b"l"] and back[b"n"] == 4


def test_python2_pickles_as_in_the_official_archive():
    data = py2_dumps(_batch(1))
    globals_used = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert globals_used == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert not any(op.name in ("BINBYTES", "SHORT_BINBYTES") for op, _, _ in pickletools.genops(data))
    split = cifar.parse_batch(data, "py2")
    assert np.array_equal(split.images.reshape(-1, 3072), _batch(1)[b"data"])


def test_members_are_never_extracted(tmp_path, out_dir):
    """A member named ../../data_batch_1 is read in memory by its base name, never written."""
    members = _members()
    src = make_archive(tmp_path / "src.tar.gz", members, prefix="../../")
    r = import_cifar10(src, out_dir / "c.h5")
    assert r.num_train == 5 * PER_BATCH
    assert not (tmp_path.parent / "data_batch_1").exists() and leftovers(out_dir) == ["c.h5"]


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("make, match", [
    (lambda d: _truncate(make_archive(d / "src.tar.gz", _members()), 0.6), r"src.tar.gz is truncated or corrupt"),
    (lambda d: _truncate(make_archive(d / "src.tar", _members(), mode="w"), 0.5), r"src.tar is truncated or corrupt"),
    (lambda d: (d / "src.tar.gz").write_bytes(b"just text, not an archive" * 100) and d / "src.tar.gz",
     r"src.tar.gz is not a tar archive"),
    (lambda d: make_archive(d / "src.tar.gz", _members(drop=["data_batch_2", "data_batch_4"])),
     r"src.tar.gz is missing data_batch_2, data_batch_4 \(CIFAR-10 has data_batch_1 ... data_batch_5"),
    (lambda d: make_folder(d / "src", _members(drop=["data_batch_5"])), r"src is missing data_batch_5"),
    (lambda d: make_archive(d / "src.tar.gz", _members(extra={"data_batch_1": b"\x80\x02garbage"})),
     r"data_batch_1 is not a valid CIFAR-10 pickle"),
    (lambda d: make_archive(d / "src.tar.gz", _members(extra={"data_batch_1": pickle.dumps([1, 2])})),
     r"data_batch_1 is not a CIFAR-10 batch \(expected a dict with 'data' and 'labels'\)"),
    (lambda d: make_archive(d / "src.tar.gz", _members(extra={"data_batch_1": pickle.dumps(
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})})),
     r"data_batch_1: 'data' must be a uint8 array of shape \(n, 3072\), got uint8 \(2, 100\)"),
    (lambda d: make_archive(d / "src.tar.gz", _members(extra={"data_batch_1": pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})})), r"labels must be in \[0, 10\), got min 0 and max 10"),
    (lambda d: make_archive(d / "src.tar.gz", _members(extra={"data_batch_1": pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})})), r"has 2 images but labels of shape \(1,\)"),
    (lambda d: make_archive(d / "src.tar.gz", _members(extra={"batches.meta": pickle.dumps({b"label_names": [b"a"]})})),
     r"batches.meta: expected 'label_names', a list of 10 names"),
    (lambda d: d / "src-does-not-exist", r"source .*src-does-not-exist does not exist"),
])
def test_bad_sources_fail_cleanly(tmp_path, out_dir, make, match):
    src = make(tmp_path)
    with pytest.raises(DatasetError, match=match):
        import_cifar10(src, out_dir / "c.h5")
    assert leftovers(out_dir) == []


def test_duplicate_batch_is_refused(tmp_path, out_dir):
    src = tmp_path / "src.tar.gz"
    with tarfile.open(src, "w:gz") as tar:
        for prefix in ("a/", "b/"):
            for name, data in _members().items():
                info = tarfile.TarInfo(prefix + name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match=r"holds data_batch_1 twice"):
        import_cifar10(src, out_dir / "c.h5")


def test_output_rules(archive, out_dir):
    import_cifar10(archive, out_dir / "c.h5")
    with pytest.raises(DatasetError, match=r"c.h5 already exists \(use --force to replace it\)"):
        import_cifar10(archive, out_dir / "c.h5")
    import_cifar10(archive, out_dir / "c.h5", overwrite=True)
    with pytest.raises(DatasetError, match=r"is a folder; give a file name"):
        import_cifar10(archive, out_dir)
    with pytest.raises(DatasetError, match=r"--md5 must be 32 hexadecimal digits, got 'xyz'"):
        import_cifar10(archive, out_dir / "d.h5", md5="xyz")


def test_crash_while_writing_leaves_no_file(archive, out_dir):
    def explode(task, done, total):
        if task == "write":
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the HDF5 write

    with pytest.raises(KeyboardInterrupt):
        import_cifar10(archive, out_dir / "c.h5", progress=explode)
    assert leftovers(out_dir) == []


# ----------------------------------------------------------------------------- corrupt HDF5

def _valid_h5(archive, out_dir) -> Path:
    import_cifar10(archive, out_dir / "good.h5")
    return out_dir / "good.h5"


def _edit(path: Path, fn) -> Path:
    with h5py.File(path, "a") as f:
        fn(f)
    return path


@pytest.mark.parametrize("corrupt, match", [
    (lambda p: (p.write_bytes(b"\x00" * 1000), p)[1], r"good.h5 is not a readable HDF5 dataset \(corrupt or truncated\?\)"),
    (lambda p: _truncate(p, 0.3), r"good.h5 is not a readable HDF5 dataset \(corrupt or truncated\?\)"),
    (lambda p: _edit(p, lambda f: f.attrs.__setitem__("format", "other")), r"is an HDF5 file but not a numbaconv dataset"),
    (lambda p: _edit(p, lambda f: f.__delitem__("train/labels")), r"/train/labels is missing"),
    (lambda p: _edit(p, lambda f: f.__delitem__("train")), r"group /train is missing"),
    (lambda p: _edit(p, lambda f: f["train/labels"].__setitem__(0, 12)), r"train labels must be in \[0, 10\), got min \d+ and max 12"),
    (lambda p: _edit(p, lambda f: (f.__delitem__("test/labels"), f["test"].create_dataset("labels", data=np.zeros(3, int)))),
     r"test has 4 images but labels of shape \(3,\)"),
    (lambda p: _edit(p, lambda f: (f.__delitem__("train/images"), f["train"].create_dataset(
        "images", data=np.zeros((20, 3, 32, 32), np.float32)))), r"train images must be uint8 \(N, 3, H, W\), got float32"),
])
def test_corrupt_hdf5_is_one_clear_error(archive, out_dir, corrupt, match):
    path = corrupt(_valid_h5(archive, out_dir))
    with pytest.raises(DatasetError, match=match):
        load_dataset(str(path), num_val=2)
    result = runner.invoke(app, ["datasets", "info", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().startswith("error:") and "\n" not in result.output.strip()


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Wide consoles, so one error line stays one line whatever the tmp path length."""
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 1000)
    monkeypatch.setattr(c.err_console, "width", 1000)


def test_cli_imports_lists_and_describes(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path / "home"))
    result = runner.invoke(app, ["datasets", "cifar10", "--source", str(archive)])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'home' / 'cifar10.h5'}" in result.output and "20 training images, 4 test images" in result.output
    assert sha256(archive) in result.output
    listing = runner.invoke(app, ["datasets", "list"])
    assert listing.exit_code == 0 and "cifar10" in listing.output and "synthetic" in listing.output
    assert f"sha256 {sha256(archive)[:12]}" in listing.output
    info = runner.invoke(app, ["datasets", "info", "cifar10"])
    assert info.exit_code == 0 and "9 truck" in info.output and f"source_sha256: {sha256(archive)}" in info.output
    again = runner.invoke(app, ["datasets", "cifar10", "--source", str(archive)])
    assert again.exit_code == 1 and "already exists (use --force to replace it)" in again.output
    assert runner.invoke(app, ["datasets", "cifar10", "--source", str(archive), "--force"]).exit_code == 0


def test_cli_train_only_and_url(tmp_path, server):
    base, www = server
    make_archive(www / "c.tar.gz", _members(with_test=False))
    out = tmp_path / "o" / "x.h5"
    result = runner.invoke(app, ["datasets", "cifar10", "--source", f"{base}/c.tar.gz", "--out", str(out),
                                 "--md5", md5(www / "c.tar.gz")])
    assert result.exit_code == 0, result.output
    assert "train split only" in result.output and "no test split" in result.output and "md5 verified" in result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.h5"]


@pytest.mark.parametrize("make, extra, match", [
    (lambda d: make_archive(d / "src.tar.gz", _members()), ["--md5", "0" * 32], "checksum mismatch"),
    (lambda d: d / "nowhere.tar.gz", [], "nowhere.tar.gz does not exist"),
    (lambda d: _truncate(make_archive(d / "src.tar.gz", _members()), 0.5), [], "is truncated or corrupt"),
    (lambda d: make_archive(d / "src.tar.gz", _members(drop=["data_batch_3"])), [], "is missing data_batch_3"),
    (lambda d: make_archive(d / "src.tar.gz", _members(extra={"test_batch": pickle.dumps(_Evil(d / "x"))})), [],
     "refused pickle global"),
])
def test_cli_errors_are_one_line(tmp_path, make, extra, match):
    src = make(tmp_path)
    result = runner.invoke(app, ["datasets", "cifar10", "--source", str(src), "--out", str(tmp_path / "o.h5")] + extra)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.output
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_cli_missing_cifar10_and_synthetic_info(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path))
    result = runner.invoke(app, ["datasets", "info", "cifar10"])
    assert result.exit_code == 1 and "run `numbaconv datasets cifar10`" in result.output
    info = runner.invoke(app, ["datasets", "info", "synthetic"])
    assert info.exit_code == 0 and "5 disk" in info.output and "5,000" in info.output
