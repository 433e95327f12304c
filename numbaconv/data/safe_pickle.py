"""Unpickling a file from the internet without building NumPy objects from the stream.

A pickle is a small program: its opcodes call whatever callables it names, and NumPy's own
reconstructors trust their arguments (a crafted ``numpy.dtype`` state plus ``_reconstruct``
and BUILD can forge an array whose object field is raw attacker bytes; one SETITEMS on it then
frees an attacker-chosen pointer: a segmentation fault, or worse). So here:

* the opcodes run in the pure-Python unpickler with a reduced dispatch table: only constants,
  strings, lists, tuples, dicts, sets, the memo, GLOBAL, REDUCE and a BUILD that accepts only
  our stand-ins; object creation opcodes (INST, OBJ, NEWOBJ, EXT*, persistent IDs, out-of-band
  buffers) are refused;
* the globals a NumPy pickle names resolve to inert stand-ins written here (plain Python
  objects that record and check their arguments), never to NumPy: ``numpy.dtype`` accepts only
  the plain integer types (``u1``, ``i1`` ... ``u8``, ``i8``) and their one valid state,
  ``_reconstruct``/BUILD and ``_frombuffer`` record a shape, a dtype and a byte string,
  ``scalar`` gives a Python int, ``_codecs.encode`` only turns a latin-1 str into bytes and
  ``bytes`` only makes ``b''`` (how Python 3 writes bytes at protocol 2);
* only after the stream has been read are arrays made, by ``np.frombuffer`` on those bytes,
  once the byte count equals shape x item size.

Supported encodings of an array: Python 2 protocol 2 (read with ``encoding='bytes'``), Python 3
protocols 0-2 (bytes through ``_codecs.encode``), protocols 3-4 (``_reconstruct`` + BUILD) and 5
(``_frombuffer`` with an in-band buffer); NumPy 1 (``numpy.core``) and 2 (``numpy._core``) names.
Anything else, including a float or object dtype, is one ``RefusedPickle`` (a ValueError) line.
"""
from __future__ import annotations

import io
import math
import pickle
import pickletools

import numpy as np

__all__ = ["RefusedPickle", "loads"]

_INTEGER_CODES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"}
_MAX_NDIM = 32


class RefusedPickle(ValueError):
    """The pickle asks for something outside what plain integer arrays need."""


def _text(value, what: str) -> str:
    if isinstance(value, bytes):  # Python 2 str, read with encoding='bytes'
        value = value.decode("latin1")
    if not isinstance(value, str):
        raise RefusedPickle(f"{what} must be a string, got {type(value).__name__}")
    return value


def _flag(value, what: str) -> bool:
    if value not in (0, 1) or type(value) not in (bool, int):
        raise RefusedPickle(f"{what} must be a boolean, got {value!r:.40}")
    return bool(value)


class _StandIn:
    """Base of the objects the stream may BUILD; they hold checked plain data only."""
    __slots__ = ()
    __hash__ = None  # never a dict key or set member: the stream cannot hide them there

    def build(self, state) -> None:
        raise NotImplementedError


class _DType(_StandIn):
    """Stands in for numpy.dtype(code): an integer code and, after BUILD, its byte order."""
    __slots__ = ("code", "byteorder", "built")

    def __init__(self, code: str):
        self.code, self.byteorder, self.built = code, "=", False

    def build(self, state) -> None:
        # NumPy's state for a plain type: (3, byteorder, subarray, names, fields, elsize, alignment, flags).
        # Everything that could describe fields, sub-arrays or object references must be empty.
        if self.built:
            raise RefusedPickle("a dtype is given its state twice")
        if not (isinstance(state, tuple) and len(state) == 8):
            raise RefusedPickle(f"dtype state must be a tuple of 8 values, got {type(state).__name__}")
        version, order, sub, names, fields, elsize, align, flags = state
        order = _text(order, "dtype byte order")
        allowed = ("|",) if self.code[1] == "1" else ("<", ">", "=")
        if (version, sub, names, fields, elsize, align, flags) != (3, None, None, None, -1, -1, 0) \
                or type(version) is not int or order not in allowed:
            raise RefusedPickle(f"dtype {self.code} has a state a plain integer type never has "
                                f"(fields, sub-arrays, flags or byte order {order!r}); refused")
        self.byteorder, self.built = order, True

    def numpy(self) -> np.dtype:
        return np.dtype(("|" if self.code[1] == "1" else self.byteorder) + self.code)


def _dtype(obj, align=False, copy=False) -> _DType:
    code = _text(obj, "dtype code")
    _flag(align, "dtype align")
    _flag(copy, "dtype copy")
    if code not in _INTEGER_CODES:
        raise RefusedPickle(f"dtype {code!r} refused: only plain integer arrays (u1, i1, ... u8, i8) are allowed")
    return _DType(code)


class _Array(_StandIn):
    """Stands in for a NumPy array: shape, dtype, order and raw bytes, checked against each other."""
    __slots__ = ("shape", "dtype", "fortran", "data")

    def __init__(self):
        self.shape = self.dtype = self.fortran = self.data = None

    def set(self, shape, dtype, fortran, data) -> "_Array":
        if self.data is not None:
            raise RefusedPickle("an array is given its state twice")
        if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM or \
                not all(type(d) is int and 0 <= d < 2**40 for d in shape):
            raise RefusedPickle(f"array shape must be a tuple of at most {_MAX_NDIM} sizes, got {shape!r:.60}")
        if not isinstance(dtype, _DType):
            raise RefusedPickle(f"array dtype must be a plain integer dtype, got {type(dtype).__name__}")
        if not isinstance(data, (bytes, bytearray)):
            raise RefusedPickle(f"array data must be bytes, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.numpy().itemsize
        if len(data) != expected:
            raise RefusedPickle(f"array of shape {shape} and dtype {dtype.code} needs {expected} bytes of data, "
                                f"the pickle holds {len(data)}")
        self.shape, self.dtype, self.fortran, self.data = shape, dtype, _flag(fortran, "array order"), data
        return self

    def build(self, state) -> None:
        # ndarray.__setstate__ takes (version, shape, dtype, is_fortran, data) or, from old NumPy, no version.
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and type(state[0]) is int:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise RefusedPickle("array state must be (version, shape, dtype, is_fortran, data)")
        self.set(*state)

    def numpy(self) -> np.ndarray:
        if self.data is None:
            raise RefusedPickle("an array is never given its data")
        a = np.frombuffer(self.data, dtype=self.dtype.numpy())
        return a.reshape(self.shape, order="F" if self.fortran else "C")


class _NDArrayType:
    """The ``numpy.ndarray`` global: only ever an argument to ``_reconstruct``."""
    __slots__ = ()


_NDARRAY = _NDArrayType()


def _reconstruct(cls, shape, typecode) -> _Array:
    # NumPy pickles an array as _reconstruct(ndarray, (0,), b'b'), then BUILD with its state.
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise RefusedPickle("_reconstruct is only allowed as NumPy writes it: (ndarray, (0,), b'b')")
    return _Array()


def _frombuffer(buf, dtype, shape, order) -> _Array:
    # Protocol 5: _frombuffer(buffer, dtype, shape, order) with an in-band buffer.
    order = _text(order, "array order")
    if order not in ("C", "F"):
        raise RefusedPickle(f"array order must be 'C' or 'F', got {order!r:.20}")
    return _Array().set(shape, dtype, order == "F", buf)


def _scalar(dtype, data) -> int:
    # A NumPy integer scalar (e.g. np.int64(3) in a label list) becomes a Python int.
    if not isinstance(dtype, _DType) or not isinstance(data, bytes) or len(data) != dtype.numpy().itemsize:
        raise RefusedPickle("a NumPy scalar must be a plain integer dtype and its bytes")
    return int(np.frombuffer(data, dtype=dtype.numpy())[0])


def _latin1_encode(text, encoding="latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"refused _codecs.encode({type(text).__name__}, {encoding!r:.20}): only the "
                            f"latin1 form that pickles bytes is allowed")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    # ... and an empty bytes object as __builtin__.bytes() (e.g. the data of an empty array).
    if args:
        raise RefusedPickle("bytes() is only allowed without arguments (how Python 3 pickles b'')")
    return b""


_GLOBALS = {("_codecs", "encode"): _latin1_encode, ("__builtin__", "bytes"): _empty_bytes,
            ("builtins", "bytes"): _empty_bytes, ("numpy", "dtype"): _dtype, ("numpy", "ndarray"): _NDARRAY}
for _core in ("numpy.core", "numpy._core"):
    _GLOBALS.update({(f"{_core}.multiarray", "_reconstruct"): _reconstruct,
                     (f"{_core}.multiarray", "scalar"): _scalar,
                     (f"{_core}.numeric", "_frombuffer"): _frombuffer})
_CALLABLES = tuple(v for v in _GLOBALS.values() if callable(v))

# Opcodes that only push plain data, manage the stack and memo, or look up globals (which resolve to
# the stand-ins above); REDUCE and BUILD are replaced below. Everything else is refused by name.
_PLAIN_OPCODES = """PROTO FRAME STOP MARK POP POP_MARK DUP PUT BINPUT LONG_BINPUT GET BINGET LONG_BINGET MEMOIZE
    NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT
    STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8
    UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8
    EMPTY_LIST APPEND APPENDS LIST EMPTY_DICT DICT SETITEM SETITEMS EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3
    EMPTY_SET ADDITEMS FROZENSET GLOBAL STACK_GLOBAL""".split()
_OPCODE_NAMES = {op.code.encode("latin1")[0]: op.name for op in pickletools.opcodes}


class _Dispatch(dict):
    def __missing__(self, code):
        name = _OPCODE_NAMES.get(code)
        raise RefusedPickle(f"pickle opcode {name} refused (it creates objects other than plain data)" if name
                            else f"not a pickle: unknown opcode byte 0x{code:02x}")


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler: its dispatch table can be restricted
    def find_class(self, module, name):
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise RefusedPickle(f"refused pickle global {module}.{name} (only NumPy integer arrays, lists, "
                                f"dicts, bytes and numbers are allowed)") from None

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is f for f in _CALLABLES) or type(args) is not tuple:
            raise RefusedPickle(f"REDUCE may only call the NumPy stand-ins, not a {type(func).__name__}")
        self.stack[-1] = func(*args)

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _StandIn):
            raise RefusedPickle(f"BUILD refused on a {type(inst).__name__} (only NumPy arrays and dtypes take a state)")
        inst.build(state)

    dispatch = _Dispatch({code: fn for code, fn in pickle._Unpickler.dispatch.items()
                          if _OPCODE_NAMES.get(code) in _PLAIN_OPCODES})
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build


_PLAIN_TYPES = (int, float, bool, str, bytes, type(None))


def _inflate(obj, memo: dict):
    """Replace the stand-ins by real values (arrays by np.frombuffer) in dicts, lists and tuples."""
    if type(obj) in _PLAIN_TYPES:  # the bulk of a batch (labels, file names): nothing to replace
        return obj
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, _Array):
        memo[key] = obj.numpy()
    elif isinstance(obj, _DType):
        memo[key] = obj.numpy()
    elif isinstance(obj, _StandIn) or isinstance(obj, _NDArrayType) or callable(obj):
        raise RefusedPickle(f"the pickle holds a bare {type(obj).__name__.strip('_')} where data belongs")
    elif type(obj) is list:
        memo[key] = out = []  # registered first: a list may contain itself
        out.extend(_inflate(v, memo) for v in obj)
    elif type(obj) is dict:
        memo[key] = out = {}
        out.update((k, _inflate(v, memo)) for k, v in obj.items())
    elif type(obj) is tuple:
        memo[key] = tuple(_inflate(v, memo) for v in obj)
    else:  # str, bytes, bytearray, numbers, None, sets (which cannot hold stand-ins)
        memo[key] = obj
    return memo[key]


def loads(data: bytes):
    """Unpickle ``data`` (Python 2 strings as bytes) into plain Python data and NumPy integer arrays.

    Raises ``RefusedPickle`` for anything outside that; a garbled stream raises what the unpickler
    raises (``pickle.UnpicklingError``, ``EOFError``, ``ValueError``, ...)."""
    obj = _Unpickler(io.BytesIO(data), encoding="bytes").load()
    try:
        return _inflate(obj, {})
    except RecursionError:
        raise RefusedPickle("the pickle nests containers too deeply") from None
