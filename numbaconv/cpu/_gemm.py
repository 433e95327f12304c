"""A single-threaded BLAS GEMM callable from inside Numba kernels.

NumPy's OpenBLAS exports ``cblas_sgemm``/``cblas_dgemm``; registering their
addresses with LLVM under fixed names lets ``@njit`` code call them by name,
so cached kernels stay valid across processes. Each ``prange`` iteration then
runs its own small GEMM on the data it owns, and conv needs no second thread
pool: the GEMM is called with BLAS limited to one thread (``blas_threads(1)``
around the kernel), so Numba's threads are the only ones working and nothing
spins against them.

``AVAILABLE`` is False when NumPy's BLAS is not an OpenBLAS with these
symbols (e.g. Accelerate on macOS); conv then uses NumPy matmul instead.
"""
from __future__ import annotations

import ctypes

import numpy as np
from numba import types
from numba.extending import intrinsic, overload

AVAILABLE = False
_NAMES = {  # symbol prefix/suffix -> integer width of M, N, K, lda...
    ("scipy_cblas_", "64_"): types.int64,
    ("cblas_", "64_"): types.int64,
    ("scipy_cblas_", ""): types.int32,
    ("cblas_", ""): types.int32,
}


def _register() -> types.Integer:
    """Find NumPy's OpenBLAS gemm and register it as numbaconv_sgemm/_dgemm."""
    global AVAILABLE
    import llvmlite.binding as llvm
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for (prefix, suffix), int_type in _NAMES.items():
            try:
                fns = {k: getattr(lib, f"{prefix}{k}gemm{suffix}") for k in "sd"}
            except AttributeError:
                continue
            for k, fn in fns.items():
                llvm.add_symbol(f"numbaconv_{k}gemm", ctypes.cast(fn, ctypes.c_void_p).value)
            AVAILABLE = True
            return int_type
    return types.int64


_INT = _register()


def _sig(f):
    i = _INT
    return types.void(types.int32, types.int32, types.int32, i, i, i, f, types.voidptr, i, types.voidptr, i,
                      f, types.voidptr, i)


_sgemm = types.ExternalFunction("numbaconv_sgemm", _sig(types.float32))
_dgemm = types.ExternalFunction("numbaconv_dgemm", _sig(types.float64))


@intrinsic
def _ptr(typingctx, arr):
    """The data pointer of an array (a view's pointer includes its offset)."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(arr)(context, builder, args[0])
        return builder.bitcast(ary.data, context.get_value_type(types.voidptr))
    return types.voidptr(arr), codegen


def gemm(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc):
    """Row-major ``c = alpha * op(a) @ op(b) + beta * c`` (``op`` transposes when
    ``trans_*``); call only from @njit code and only when AVAILABLE."""
    raise NotImplementedError("gemm is only callable from @njit code")


@overload(gemm)
def _gemm_overload(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc):
    fn = _sgemm if c.dtype == types.float32 else _dgemm
    ftype = np.float32 if c.dtype == types.float32 else np.float64
    ityp = np.int64 if _INT == types.int64 else np.int32

    def impl(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc):
        fn(np.int32(101), np.int32(112 if trans_a else 111), np.int32(112 if trans_b else 111),
           ityp(M), ityp(N), ityp(K), ftype(alpha), _ptr(a), ityp(lda), _ptr(b), ityp(ldb),
           ftype(beta), _ptr(c), ityp(ldc))
    return impl
