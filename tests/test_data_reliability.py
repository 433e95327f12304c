"""Issue #16, data side: corrupted archives, concurrent imports, sizes beyond the data, forged HDF5
headers, unwritable outputs, a full disk, Ctrl-C and kill -9 leftovers, help and hints. Every failure
is one error line, and nothing is left behind."""
import errno
import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from numbaconv import files
from numbaconv.data import DatasetError, load_dataset
from numbaconv.data import cifar
from numbaconv.data.cifar import import_cifar10
from numbaconv.files import exclusive_lock
from numbaconv_cli.main import app
from test_data_cifar import (PER_BATCH, _batch, _members, archive, leftovers, make_archive, md5,  # noqa: F401
                             out_dir, server, wide_console)
from test_files import dead_pid

runner = CliRunner()


def one_error_line(result, code=1) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


# ----------------------------------------------------------------------------- corrupted archives

def test_a_flipped_bit_in_the_gzip_stream_is_caught_by_the_crc(tmp_path, out_dir):
    """Level-0 gzip stores the bytes as they are, so the flipped bit still decompresses: only the
    CRC-32 at the end of the stream can tell (before, this imported with exit 0)."""
    src = tmp_path / "src.tar.gz"
    with tarfile.open(src, "w:gz", compresslevel=0) as tar:
        for name, data in _members().items():
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = bytearray(src.read_bytes())
    at = raw.index(_batch(1)[b"data"][1, :200].tobytes()) + 100  # an image byte of data_batch_1 (protocol 4)
    raw[at] ^= 0x01
    src.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"src.tar.gz is truncated or corrupt: CRC check failed"):
        import_cifar10(src, out_dir / "c.h5")
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("cut", [1, 4, 8])
def test_an_archive_cut_by_a_few_bytes_is_refused(archive, out_dir, cut):
    archive.write_bytes(archive.read_bytes()[:-cut])  # the length / CRC trailer is incomplete
    with pytest.raises(DatasetError, match=r"src.tar.gz is truncated or corrupt: Compressed file ended"):
        import_cifar10(archive, out_dir / "c.h5")
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("mode, suffix", [("w:bz2", "tar.bz2"), ("w:xz", "tar.xz")])
def test_bzip2_and_xz_archives_import_and_are_checked_to_the_end(tmp_path, out_dir, mode, suffix):
    src = make_archive(tmp_path / f"src.{suffix}", _members(), mode=mode)
    assert import_cifar10(src, out_dir / "c.h5").num_train == 5 * PER_BATCH
    src.write_bytes(src.read_bytes()[:-3])
    with pytest.raises(DatasetError, match=rf"src.{suffix} is truncated or corrupt"):
        import_cifar10(src, out_dir / "d.h5")
    assert leftovers(out_dir) == ["c.h5"]


def test_official_archive_md5(archive, tmp_path, out_dir, monkeypatch):
    official = tmp_path / "src" / cifar.OFFICIAL_NAME
    official.parent.mkdir()
    official.write_bytes(archive.read_bytes())
    # A file with the official name and size but another MD5 is a damaged official archive.
    monkeypatch.setattr(cifar, "OFFICIAL_SIZE", official.stat().st_size)
    with pytest.raises(DatasetError, match=r"has the official archive's name and size but not its MD5 .*download it again"):
        import_cifar10(official, out_dir / "c.h5")
    assert leftovers(out_dir) == []
    # With the official MD5 it is recorded as verified, without --md5.
    monkeypatch.setattr(cifar, "OFFICIAL_MD5", md5(archive))
    r = import_cifar10(official, out_dir / "c.h5")
    assert r.md5_verified == md5(archive)
    with h5py.File(out_dir / "c.h5", "r") as f:
        assert f.attrs["source_md5"] == md5(archive)
    # Another archive (e.g. a re-encoded copy under its own name) still imports as is.
    other = make_archive(tmp_path / "src-other.tar.gz", _members(with_test=False))
    assert import_cifar10(other, out_dir / "d.h5").md5_verified is None


# ----------------------------------------------------------------------------- one import per output

def test_a_second_import_to_the_same_out_is_refused(archive, out_dir):
    out = out_dir / "c.h5"
    with exclusive_lock(out):  # as a running import holds it
        with pytest.raises(DatasetError, match=rf"--out {out} is in use by process {os.getpid()} \(lock file "):
            import_cifar10(archive, out)
        r = runner.invoke(app, ["datasets", "cifar10", "--source", str(archive), "--out", str(out)])
        assert "is in use by process" in one_error_line(r)
    assert leftovers(out_dir) == []
    import_cifar10(archive, out)  # the lock is gone with its holder
    assert leftovers(out_dir) == ["c.h5"]


def test_out_equal_to_source_is_refused(archive):
    before = archive.read_bytes()
    with pytest.raises(DatasetError, match=r"--out .*src.tar.gz is the --source itself"):
        import_cifar10(archive, archive, overwrite=True)
    assert archive.read_bytes() == before


# ----------------------------------------------------------------------------- sizes

def test_sizes_beyond_the_synthetic_set_fail_before_allocating():
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"num_val=1000000000 and num_train=4000 ask for 1000004000 synthetic "
                                             r"images; the synthetic set makes at most 60,000"):
            load_dataset("synthetic", num_val=1_000_000_000)
        with pytest.raises(ValueError, match=r"num_train=100000 ask for 101000"):
            load_dataset("synthetic", num_train=100_000)
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()


def test_sizes_beyond_a_file_fail_naming_the_value_and_the_data(archive, out_dir):
    path = str(import_cifar10(archive, out_dir / "c.h5").path)
    with pytest.raises(ValueError, match=r"num_train=17 is more than the 16 training images left in .*c.h5 after "
                                         r"num_val=4 \(it has 20\)"):
        load_dataset(path, num_val=4, num_train=17)
    with pytest.raises(ValueError, match=r"num_val=1000000000 leaves no training images: .* has 20 training images"):
        load_dataset(path, num_val=1_000_000_000)
    assert load_dataset(path, num_val=4, num_train=16).X_train.shape[0] == 16


def _forged(path, chunks):
    """A few-KB file that declares 15 TB of images (nothing is stored)."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "numbaconv-images"
        f.attrs["class_names"] = ["a", "b"]
        g = f.create_group("train")
        g.create_dataset("images", shape=(500, 3, 100_000, 100_000), dtype=np.uint8, chunks=chunks)
        g.create_dataset("labels", data=np.zeros(500, np.int64))
    return path


@pytest.mark.parametrize("chunks, match", [
    ((1, 1, 100, 100), r"declares \(500, 3, 100000, 100000\) uint8 \(15,000,000,000,000 bytes\) but stores only 0 bytes"),
    (None, r"declares \(500, 3, 100000, 100000\) uint8 .* but the [\d,]+-byte file does not hold them"),
])
def test_a_forged_hdf5_header_is_refused_before_reading(tmp_path, monkeypatch, chunks, match):
    path = _forged(tmp_path / "forged.h5", chunks)
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=match):
            load_dataset(str(path))
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()
    assert "does not hold them" in one_error_line(runner.invoke(app, ["datasets", "info", str(path)])) or chunks
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path))
    listing = runner.invoke(app, ["datasets", "list"])
    assert listing.exit_code == 0 and "unreadable" in listing.output and "declares" in listing.output


def test_a_header_larger_than_memory_is_refused(archive, out_dir, monkeypatch):
    path = import_cifar10(archive, out_dir / "c.h5").path
    monkeypatch.setattr("numbaconv.data.store._physical_memory", lambda: 1000)
    with pytest.raises(DatasetError, match=r"c.h5 declares 0.0 GiB of images and labels, more than this machine's"):
        load_dataset(str(path), num_val=2)


# ----------------------------------------------------------------------------- outputs that cannot be written

def test_a_full_disk_while_writing_leaves_nothing(archive, out_dir, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Group, "create_dataset", no_space)
    with pytest.raises(DatasetError, match=r"no space left to write .*c.h5 \(it needs about 0 MiB in .*out\); "
                                           r"free some space or choose another --out"):
        import_cifar10(archive, out_dir / "c.h5")
    assert leftovers(out_dir) == []
    r = runner.invoke(app, ["datasets", "cifar10", "--source", str(archive), "--out", str(out_dir / "c.h5")])
    assert "no space left to write" in one_error_line(r) and leftovers(out_dir) == []


def test_out_under_a_file_and_in_an_unwritable_folder(archive, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    r = runner.invoke(app, ["datasets", "cifar10", "--source", str(archive), "--out", str(tmp_path / "afile" / "c.h5")])
    assert "cannot use output folder" in one_error_line(r) and "afile: it is a file" in r.output
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root ignores permission bits: stand in for what access() says to others
            monkeypatch.setattr(files.os, "access", lambda p, mode: False)
        r = runner.invoke(app, ["datasets", "cifar10", "--source", str(archive), "--out", str(ro / "c.h5")])
        assert "no write permission" in one_error_line(r)
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_folders_made_for_a_failed_import_are_removed(tmp_path):
    src = make_archive(tmp_path / "src.tar.gz", _members(drop=["data_batch_1"]))
    with pytest.raises(DatasetError, match=r"is missing data_batch_1"):
        import_cifar10(src, tmp_path / "new" / "deeper" / "c.h5")
    assert not (tmp_path / "new").exists()


def test_dangling_symlinks_in_the_data_home(archive, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("NUMBACONV_DATA", str(home))
    (home / "cifar10.h5").symlink_to(tmp_path / "gone.h5")
    listing = runner.invoke(app, ["datasets", "list"])
    assert listing.exit_code == 0 and "Traceback" not in listing.output
    assert "dangling link to" in listing.output and "synthetic" in listing.output
    assert "is a dangling symbolic link (to" in one_error_line(runner.invoke(app, ["datasets", "info", "cifar10"]))
    (tmp_path / "homefile").write_text("x")
    monkeypatch.setenv("NUMBACONV_DATA", str(tmp_path / "homefile"))
    assert "is a file, not a folder" in one_error_line(runner.invoke(app, ["datasets", "list"]))


# ----------------------------------------------------------------------------- Ctrl-C and kill -9

@pytest.mark.parametrize("when", ["read", "write"])
def test_ctrl_c_during_an_import_stops_it_and_leaves_nothing(archive, out_dir, when):
    def ctrl_c(task, done, total):
        if task == when:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        import_cifar10(archive, out_dir / "c.h5", progress=ctrl_c)
    assert leftovers(out_dir) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_inside_h5py_cleanup_exits_130(archive, out_dir):
    """The SIGINT arrives while Python runs a finalizer during the HDF5 write, where a
    KeyboardInterrupt would be 'ignored' (as in h5py's cleanup) and the import would finish
    with exit 0. Deferred to a safe point, it stops the command with 130 and no file."""
    out = out_dir / "c.h5"
    script = f"""
        import gc, signal, sys
        from numbaconv_cli.commands import datasets

        class Finalizer:
            def __del__(self):
                signal.raise_signal(signal.SIGINT)
                sum(range(1000))  # the interpreter runs signal handlers here, inside __del__

        real = datasets._Bars.__call__
        def call(self, task, done, total):
            if task == "write":
                Finalizer()
            return real(self, task, done, total)
        datasets._Bars.__call__ = call
        from numbaconv_cli.main import app
        sys.argv = ["numbaconv", "datasets", "cifar10", "--source", {str(archive)!r}, "--out", {str(out)!r}]
        app()
        """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, COLUMNS="1000"))
    assert r.returncode == 130, (r.returncode, r.stdout[-300:], r.stderr[-300:])
    assert r.stderr.strip() == "error: interrupted: the import stopped and wrote nothing"
    assert leftovers(out_dir) == []


def test_temporaries_of_killed_imports_are_removed_next_time(archive, out_dir):
    dead, live = dead_pid(), os.getpid()
    stale = out_dir / f".c.h5.tmp-{dead}-0123abcd.part"
    running = out_dir / f".c.h5.tmp-{live}-0123abcd.part"  # another import still writing
    stale.write_bytes(b"half an HDF5 file")
    running.write_bytes(b"being written")
    import_cifar10(archive, out_dir / "c.h5")
    assert not stale.exists() and running.exists()


# ----------------------------------------------------------------------------- help and hints

def test_help_shows_the_data_home_default_and_hints_name_source(out_dir):
    r = runner.invoke(app, ["datasets", "cifar10", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "cifar10.h5 in the data home" in r.output and " /cifar10.h5" not in r.output
    with pytest.raises(DatasetError, match=r"cannot download http://127.0.0.1:9/x.tar.gz: .*; without internet "
                                           r"access here, download cifar-10-python.tar.gz on another machine .* "
                                           r"--source PATH"):
        import_cifar10("http://127.0.0.1:9/x.tar.gz", out_dir / "c.h5")


def test_oversized_batch_files_in_a_folder_are_refused_before_reading(tmp_path, out_dir, monkeypatch):
    from test_data_cifar import make_folder

    src = make_folder(tmp_path / "src", _members())
    monkeypatch.setattr(cifar, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(DatasetError, match=r"src/data_batch_1 is \d+ bytes, too large for a CIFAR-10 batch"):
        import_cifar10(src, out_dir / "c.h5")
    assert leftovers(out_dir) == []
