"""numbaconv.data.safe_pickle: genuine NumPy pickles (Python 2 and 3, protocols 2-5, NumPy 1 and 2
names) load; crafted ones, above all the dtype/_reconstruct/BUILD/SETITEMS payload that crashed the
old allow-list unpickler, are one clear error. Crash checks run in a subprocess, so a segfault shows
as a failed test rather than a dead pytest."""
import os
import pickle
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from numbaconv.data.cifar import parse_batch
from numbaconv.data.safe_pickle import RefusedPickle, loads
from test_data_cifar import _batch, _members, make_archive, py2_dumps


# ----------------------------------------------------------------------------- hand-written pickles

def sbs(b: bytes) -> bytes:  # SHORT_BINSTRING: a Python 2 str (bytes with encoding='bytes')
    return b"U" + bytes([len(b)]) + b


def uni(t: str) -> bytes:  # BINUNICODE
    b = t.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def dtype_op(code: bytes) -> bytes:
    return b"cnumpy\ndtype\n" + sbs(code) + b"\x89\x88\x87R"  # dtype(code, False, True)


PLAIN_STATE = b"(K\x03" + sbs(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # (3,'|',None,None,None,-1,-1,0)


def array_op(dtype: bytes, shape: bytes, data: bytes, core=b"numpy.core") -> bytes:
    """_reconstruct(ndarray, (0,), b'b') BUILD (1, shape, dtype, False, data), as NumPy writes it."""
    return (b"c" + core + b".multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + sbs(b"b") + b"\x87R"
            + b"(K\x01" + shape + dtype + b"\x89" + data + b"tb")


def attack(dtype_code=b"V8", core=b"numpy.core", field_code=b"O8") -> bytes:
    """A record dtype whose field 'f' is an object reference but whose flags say 'no objects', an array
    of it whose 8 data bytes are that reference (0x4141...), then SETITEMS arr['f'] = 0, which makes
    NumPy release the forged pointer."""
    forged = (b"(K\x03" + sbs(b"|") + b"N" + uni("f") + b"\x85}" + uni("f") + dtype_op(field_code) + b"K\x00\x86s"
              + b"K\x08K\x01K\x00tb")
    return (b"\x80\x02" + array_op(dtype_op(dtype_code) + forged, b"K\x01\x85", sbs(b"A" * 8), core)
            + b"(" + uni("f") + b"K\x00u.")


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="1000")  # one error line stays one line whatever the tmp path length
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=env)


# ----------------------------------------------------------------------------- the attack

def test_the_payload_is_live_against_plain_numpy():
    """The test payload really crashes an unrestricted NumPy unpickle (so refusing it means something)."""
    r = run_python(f"import pickle; pickle.loads({attack()!r}, encoding='bytes')")
    if r.returncode == 1 and "Error" in r.stderr:
        pytest.skip(f"this NumPy rejects the payload by itself: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode < 0, (r.returncode, r.stderr[-500:])  # killed by a signal (SIGSEGV)


ATTACKS = [  # (dtype code, NumPy module prefix, field dtype code, expected refusal)
    (b"V8", b"numpy.core", b"O8", r"dtype 'V8' refused: only plain integer arrays"),
    (b"V8", b"numpy._core", b"O8", r"dtype 'V8' refused: only plain integer arrays"),
    (b"u8", b"numpy.core", b"O8", r"dtype 'O8' refused: only plain integer arrays"),
    (b"u8", b"numpy.core", b"u8", r"dtype u8 has a state a plain integer type never has"),  # allowed codes, forged state
]


def test_attack_is_refused_without_a_crash():
    """All variants in one subprocess (one interpreter start); a crash on any shows as a signal exit."""
    payloads = [attack(code, core, field) for code, core, field, _ in ATTACKS]
    r = run_python(f"""
        from numbaconv.data.cifar import safe_loads
        for payload in {payloads!r}:
            try:
                safe_loads(payload, "data_batch_1")
                print("loaded")
            except ValueError as e:
                print("refused:", e, flush=True)
        """)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-500:])
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(ATTACKS)
    for line, (*_, match) in zip(lines, ATTACKS):
        assert line.startswith("refused: data_batch_1: ") and re.search(match, line), line


def test_attack_inside_an_archive_is_one_error_line_from_the_cli(tmp_path):
    src = make_archive(tmp_path / "src.tar.gz", _members(extra={"data_batch_2": attack()}))
    r = run_python(f"""
        import sys
        from numbaconv_cli.main import app
        sys.argv = ["numbaconv", "datasets", "cifar10", "--source", {str(src)!r}, "--out", {str(tmp_path / 'c.h5')!r}]
        app()
        """)
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "error:" in r.stderr and "data_batch_2: dtype 'V8' refused" in r.stderr.replace("\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.tar.gz"]


# ----------------------------------------------------------------------------- genuine pickles

@pytest.mark.parametrize("dumps", [
    pytest.param(py2_dumps, id="python2-protocol2"),
    *[pytest.param(lambda o, p=p: pickle.dumps(o, protocol=p), id=f"python3-protocol{p}") for p in (0, 1, 2, 3, 4, 5)],
])
def test_genuine_batches_load(dumps):
    batch = _batch(3)
    data = dumps(batch)
    d = loads(data)
    assert set(d) == set(batch) and d[b"labels"] == batch[b"labels"] and d[b"filenames"] == batch[b"filenames"]
    assert d[b"data"].dtype == np.uint8 and np.array_equal(d[b"data"], batch[b"data"])
    split = parse_batch(data, "b")
    assert np.array_equal(split.images.reshape(-1, 3072), batch[b"data"]) and split.labels.tolist() == batch[b"labels"]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_integer_arrays_scalars_and_orders(protocol):
    obj = {b"labels": np.array([3, 1, 2], dtype=">i4"), b"u16": np.arange(6, dtype="<u2").reshape(2, 3),
           b"f": np.asfortranarray(np.arange(12, dtype=np.uint8).reshape(3, 4)),
           b"scalars": [np.int64(-5), np.uint8(7)], b"empty": np.zeros((0, 3072), np.uint8)}
    back = loads(pickle.dumps(obj, protocol=protocol))
    for k in (b"labels", b"u16", b"f", b"empty"):
        assert back[k].dtype == obj[k].dtype and np.array_equal(back[k], obj[k])
    assert back[b"scalars"] == [-5, 7] and all(type(v) is int for v in back[b"scalars"])
    split = parse_batch(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": obj[b"labels"]},
                                     protocol=protocol), "b")
    assert split.labels.tolist() == [3, 1, 2]


def test_numpy1_module_names():
    data = b"\x80\x02" + array_op(dtype_op(b"u1") + PLAIN_STATE, b"K\x02K\x02\x86", sbs(b"\x01\x02\x03\x04")) + b"."
    assert loads(data).tolist() == [[1, 2], [3, 4]]


def test_a_list_that_contains_itself_loads():
    a = [1]
    a.append(a)
    back = loads(pickle.dumps(a, protocol=2))
    assert back[0] == 1 and back[1] is back


# ----------------------------------------------------------------------------- crafted pickles

def _arr(dtype_state=PLAIN_STATE, shape=b"K\x02\x85", data=sbs(b"ab"), code=b"u1"):
    return b"\x80\x02" + array_op(dtype_op(code) + dtype_state, shape, data) + b"."


@pytest.mark.parametrize("data, match", [
    (pickle.dumps(np.zeros(2, np.float32), protocol=4), r"dtype 'f4' refused"),
    (pickle.dumps(np.array([None, 1], dtype=object), protocol=2), r"dtype 'O8' refused"),
    (pickle.dumps(np.zeros(2, [("a", "u1")]), protocol=2), r"dtype 'V1' refused"),
    (_arr(data=sbs(b"abc")), r"array of shape \(2,\) and dtype u1 needs 2 bytes of data, the pickle holds 3"),
    (_arr(shape=b"J\x00\x00\x00\x10K\x10\x86"), r"needs 4294967296 bytes of data, the pickle holds 2"),
    (_arr(shape=b"J\xff\xff\xff\xff\x85"), r"array shape must be a tuple of at most 32 sizes, got \(-1,\)"),
    (_arr(data=uni("ab")), r"array data must be bytes, got str"),
    (_arr(dtype_state=PLAIN_STATE.replace(sbs(b"|"), sbs(b"<"))), r"dtype u1 has a state .* byte order '<'"),
    (_arr()[:-1] + b"(K\x01K\x02\x85" + dtype_op(b"u1") + b"\x89" + sbs(b"cd") + b"tb.", r"given its state twice"),
    (b"\x80\x02}}b.", r"BUILD refused on a dict"),
    (b"\x80\x02cnumpy\nndarray\n)\x81.", r"opcode NEWOBJ refused"),
    (b"\x80\x02\x82\x01.", r"opcode EXT1 refused"),
    (b"(inumpy\ndtype\nS'u1'\np0\n.", r"opcode INST refused"),
    (b"\x80\x02" + sbs(b"foo") + b"Q.", r"opcode BINPERSID refused"),
    (b"\xff", r"unknown opcode byte 0xff"),
    (b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.", r"refused pickle global builtins.eval"),
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x01\x85" + sbs(b"b") + b"\x87R.",
     r"_reconstruct is only allowed as NumPy writes it"),
    (b"\x80\x02cnumpy\ndtype\n.", r"holds a bare function where data belongs"),
    (b"\x80\x02cnumpy\nndarray\n.", r"holds a bare NDArrayType where data belongs"),
    (b"\x80\x02]" + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + sbs(b"b") + b"\x87Ra.",
     r"an array is never given its data"),
    (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.", r"bytes\(\) is only allowed without arguments"),
    (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-8\x86R.", r"only the latin1 form"),
    (b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", r"nests containers too deeply"),
])
def test_crafted_pickles_are_refused(data, match):
    with pytest.raises(RefusedPickle, match=match):
        loads(data)
