"""numbaconv.files: locks, temporary names and their cleanup, writable-folder checks, deferred Ctrl-C."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from numbaconv import files
from numbaconv.files import (DeferredInterrupt, LockedError, check_writable_folder, exclusive_lock, lock_path,
                             remove_stale_temporaries, temp_name)


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    target = tmp_path / "c.h5"
    with exclusive_lock(target) as lf:
        assert lf == tmp_path / "c.h5.lock" and lf.read_text().strip() == str(os.getpid())
        with pytest.raises(LockedError, match=rf"{target} is in use by process {os.getpid()} \(lock file .*c.h5.lock\)"):
            with exclusive_lock(target):
                pass
    assert not (tmp_path / "c.h5.lock").exists()
    with exclusive_lock(target):  # free again
        pass


def test_lock_of_a_folder_lives_inside_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert lock_path(run) == run / ".lock"
    with exclusive_lock(run, what="run folder run"):
        with pytest.raises(LockedError, match=r"^run folder run is in use by process \d+"):
            with exclusive_lock(run, what="run folder run"):
                pass


def test_lock_held_by_another_process_and_stale_lock_taken_over(tmp_path):
    target = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from numbaconv.files import exclusive_lock
        with exclusive_lock({str(target)!r}):
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"in use by process {holder.pid} "):
            with exclusive_lock(target):
                pass
    finally:
        holder.kill()  # like kill -9: the lock file stays, its flock dies with the process
        holder.wait()
    assert lock_path(target).read_text().strip() == str(holder.pid)
    with exclusive_lock(target) as lf:
        assert lf.read_text().strip() == str(os.getpid())


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = dead_pid()
    stale = [tmp_path / f".c.h5.tmp-{dead}-0a1b.part", tmp_path / f".last.h5.tmp-{dead}"]
    live = [tmp_path / f".c.h5.tmp-{os.getpid()}-ffff.part", tmp_path / f".best.h5.tmp-{os.getpid()}"]
    other = [tmp_path / "c.h5", tmp_path / f"notes.tmp-{dead}", tmp_path / f".x.tmp-{dead}-zz.part"]
    for p in stale + live + other:
        p.write_bytes(b"x")
    (tmp_path / f".d.tmp-{dead}").mkdir()  # folders are never removed
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in live + other) and (tmp_path / f".d.tmp-{dead}").is_dir()
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_temp_name_is_a_hidden_sibling_that_cleanup_recognises(tmp_path):
    t1, t2 = temp_name(tmp_path / "c.h5"), temp_name(tmp_path / "c.h5")
    assert t1 != t2 and t1.parent == tmp_path and t1.name.startswith(f".c.h5.tmp-{os.getpid()}-")
    assert t1.name.endswith(".part") and files._TEMP.match(t1.name)


def test_check_writable_folder(tmp_path, monkeypatch):
    assert check_writable_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # creates nothing
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"cannot use output folder .*f/sub: it is under .*f, which is a file"):
        check_writable_folder(tmp_path / "f" / "sub")
    with pytest.raises(ValueError, match=r"cannot use run folder .*f: it is a file; choose a folder"):
        check_writable_folder(tmp_path / "f", what="run folder")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"link is a dangling symbolic link \(to .*nowhere\)"):
        check_writable_folder(tmp_path / "link" / "x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root ignores permission bits: stand in for what access() says to others
            monkeypatch.setattr(files.os, "access", lambda p, mode: False)
        with pytest.raises(ValueError, match=r"cannot write into output folder .*ro/x \(its nearest existing parent "
                                             r".*ro\): no write permission; choose another folder"):
            check_writable_folder(ro / "x")
    finally:
        ro.chmod(0o755)


def test_deferred_interrupt_holds_ctrl_c_until_a_safe_point():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with DeferredInterrupt() as guard:
            signal.raise_signal(signal.SIGINT)
            reached.append("after the signal")  # not interrupted here
            guard.check()
            reached.append("after check")
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # leaving the block is a safe point too
        with DeferredInterrupt():
            signal.raise_signal(signal.SIGINT)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "f.txt"
    files.atomic_write(target, lambda tmp: tmp.write_text("one"))
    assert target.read_text() == "one"

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.atomic_write(target, half_then_fail)

    def stop():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # e.g. a deferred Ctrl-C seen just before the rename
        files.atomic_write(target, lambda tmp: tmp.write_text("two"), check=stop)
    assert target.read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    assert files.is_disk_full(OSError(28, "x")) and not files.is_disk_full(OSError(13, "x"))
