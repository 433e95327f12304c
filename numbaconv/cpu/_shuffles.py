"""Vector shuffles between maps and F(4x4) Winograd tiles, written as LLVM IR (Numba intrinsics).

The F(4x4) transforms (``winograd``) move data between map rows and tile planes: one map row holds
the k-th rows of a row of 6x6 input tiles that start 4 columns apart, so a tile plane takes every
4th element of it. Written as scalar loops those moves were ~60% of the transforms' time (one load
and one store per element); LLVM does not turn the stride-4 pattern into shuffles by itself (and
on this CPU it will not use gathers). Here each move is one vector load, a few shuffles and vector
stores: a map row is loaded whole and each tile plane's run is picked out of it by one shuffle
and stored at once (or the reverse: the runs joined into a row, added or stored at once).

Each function handles the tile-row widths of the maps F(4x4) is used on (``TILE_COLS`` tiles a
row; the vector lengths are fixed at compile time, so each width is its own case of a switch) and
returns False for any other width or for arrays that are not C-contiguous, where the caller runs its
scalar loop. Offsets count elements from an array's start; every element read or written lies
inside the run the docstring names, so no access strays past an array's end.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# Tile columns a map row may have (tw): maps from 1 to 32 wide. F(4x4) runs on 7-32 (winograd.F4_WHERE);
# the tests force it onto smaller maps
TILE_COLS = range(1, 9)
_I32 = ir.IntType(32)


def _vector_at(context, builder, arrty, arr, offset, n):
    """A pointer to the ``n`` elements of ``arr`` from element ``offset``, as one vector."""
    ary = context.make_array(arrty)(context, builder, arr)
    elem = context.get_value_type(arrty.dtype)
    return builder.bitcast(builder.gep(ary.data, [offset]), ir.VectorType(elem, n).as_pointer())


def _load(context, builder, arrty, arr, offset, n):
    return builder.load(_vector_at(context, builder, arrty, arr, offset, n), align=arrty.dtype.bitwidth // 8)


def _store(context, builder, arrty, arr, offset, value):
    builder.store(value, _vector_at(context, builder, arrty, arr, offset, value.type.count),
                  align=arrty.dtype.bitwidth // 8)


def _nth(builder, start, step, k):
    """start + k*step: the offset of the k-th of a run of planes ``step`` elements apart."""
    return builder.add(start, builder.mul(step, ir.Constant(step.type, k)))


def _shuffle(builder, a, b, lanes):
    """Lanes of a (indices < len(a)) and b (from len(a) on), in the order given."""
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, len(lanes)), list(lanes)))


def _concat(builder, parts):
    """One vector of the equal-length vectors ``parts``, in order."""
    total = len(parts) * parts[0].type.count
    while len(parts) > 1:
        n = parts[0].type.count
        paired = [_shuffle(builder, parts[i], parts[i + 1], range(2 * n)) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:   # an odd one out: widen it with itself so the next round pairs equal lengths
            paired.append(_shuffle(builder, parts[-1], parts[-1], range(2 * n)))
        parts = paired
    v = parts[0]
    return v if v.type.count == total else _shuffle(builder, v, v, range(total))


def _switch(builder, value, keys, emit):
    """``emit(key)`` in the case of a switch on ``value`` for each key; the result is an i1, true when
    a case ran, false otherwise."""
    done = builder.append_basic_block("shuffles.done")
    other = builder.append_basic_block("shuffles.other")
    switch = builder.switch(value, other)
    ran = []
    for key in keys:
        block = builder.append_basic_block(f"shuffles.{key}")
        switch.add_case(ir.Constant(value.type, key), block)
        builder.position_at_end(block)
        emit(key)
        ran.append(builder.block)
        builder.branch(done)
    builder.position_at_end(other)
    builder.branch(done)
    builder.position_at_end(done)
    phi = builder.phi(ir.IntType(1))
    for block in ran:
        phi.add_incoming(ir.Constant(ir.IntType(1), 1), block)
    phi.add_incoming(ir.Constant(ir.IntType(1), 0), other)
    return phi


def _typed(arrays, integers):
    """Two arrays of one float dtype and integer offsets, steps and widths: the types these take."""
    dtype = arrays[0].dtype
    return (all(isinstance(a, types.Array) and a.dtype == dtype for a in arrays) and dtype in (types.float32, types.float64)
            and all(isinstance(i, types.Integer) for i in integers))


def _args(context, builder, sig, args):
    """The arguments, integers cast to intp (so offsets of any integer type add up)."""
    return [context.cast(builder, v, t, types.intp) if isinstance(t, types.Integer) else v
            for v, t in zip(args, sig.args)]


def _contiguous(*arrays):
    """Offsets count elements from an array's start only in C-contiguous arrays; for any other
    layout the functions here do nothing and return False (the caller's loop then runs)."""
    return all(a.layout == "C" for a in arrays)


def _declined(context, builder, sig, args):
    return ir.Constant(ir.IntType(1), 0)


@intrinsic
def split_tile_row(typingctx, src, s0, dst, d0, d_step, tw):
    """dst[d0 + l*d_step + j] = src[s0 + 4j + l] for l < 6, j < tw: a map row of 4tw + 2 elements
    from s0 into the 6 planes of a row of tw 6-wide tiles 4 apart (the F(4x4) input gather). True
    where tw is one of TILE_COLS."""
    if not _typed((src, dst), (s0, d0, d_step, tw)):
        return None

    def codegen(context, builder, sig, args):
        srcv, s0v, dstv, d0v, stepv, twv = _args(context, builder, sig, args)

        def emit(n):
            row = _load(context, builder, sig.args[0], srcv, s0v, 4 * n + 2)
            for l in range(6):
                plane = _shuffle(builder, row, row, [4 * j + l for j in range(n)])
                _store(context, builder, sig.args[2], dstv, _nth(builder, d0v, stepv, l), plane)
        return _switch(builder, twv, TILE_COLS, emit)
    return types.boolean(src, s0, dst, d0, d_step, tw), codegen if _contiguous(src, dst) else _declined


@intrinsic
def add_tile_row(typingctx, src, s0, s_step, dst, d0, tw):
    """dst[d0 + 4j + l] += src[s0 + l*s_step + j] for l < 6, j < tw: the 6 planes of a row of tw
    6-wide tiles 4 apart added onto a map row of 4tw + 2 elements from d0 (the adjoint of
    split_tile_row; where tiles overlap, ((row + planes 0-3) + planes 4-5)). True where tw is one of
    TILE_COLS."""
    if not _typed((src, dst), (s0, s_step, d0, tw)):
        return None

    def codegen(context, builder, sig, args):
        srcv, s0v, stepv, dstv, d0v, twv = _args(context, builder, sig, args)

        def emit(n):
            planes = [_load(context, builder, sig.args[0], srcv, _nth(builder, s0v, stepv, l), n)
                      for l in range(6)]
            first = _concat(builder, planes[:4])    # lane l*n + j: plane l, tile j
            last = _concat(builder, planes[4:])
            zero = ir.Constant(first.type, None)
            width = 4 * n + 2
            # map element 4j + l (l < 4) from plane l; 4j + 4 and 4j + 5 from planes 4 and 5; zeros elsewhere
            a = _shuffle(builder, first, zero, [(p % 4) * n + p // 4 if p < 4 * n else 4 * n for p in range(width)])
            lanes = [2 * n] * width
            for j in range(n):
                lanes[4 * j + 4], lanes[4 * j + 5] = j, n + j
            b = _shuffle(builder, last, ir.Constant(last.type, None), lanes)
            row = _load(context, builder, sig.args[3], dstv, d0v, width)
            _store(context, builder, sig.args[3], dstv, d0v, builder.fadd(builder.fadd(row, a), b))
        return _switch(builder, twv, TILE_COLS, emit)
    return types.boolean(src, s0, s_step, dst, d0, tw), codegen if _contiguous(src, dst) else _declined


@intrinsic
def join_output_row(typingctx, src, s0, s_step, bias, dst, d0, width):
    """dst[d0 + 4j + c] = src[s0 + c*s_step + j] + bias for 4j + c < width: 4 planes of a row of
    ceil(width / 4) output tiles interleaved into one map row of ``width`` elements (the F(4x4)
    output scatter). True where ceil(width / 4) is one of TILE_COLS."""
    if not _typed((src, dst), (s0, s_step, d0, width)) or not isinstance(bias, types.Float):
        return None

    def codegen(context, builder, sig, args):
        srcv, s0v, stepv, biasv, dstv, d0v, widthv = _args(context, builder, sig, args)
        elem = context.get_value_type(sig.args[0].dtype)
        biasv = context.cast(builder, biasv, sig.args[3], sig.args[0].dtype)

        def emit(w):
            n = -(-w // 4)
            planes = [_load(context, builder, sig.args[0], srcv, _nth(builder, s0v, stepv, c), n)
                      for c in range(4)]
            tiles = _concat(builder, planes)   # lane c*n + j: column c of tile j
            row = _shuffle(builder, tiles, tiles, [(p % 4) * n + p // 4 for p in range(w)])
            splat = builder.insert_element(ir.Constant(ir.VectorType(elem, w), None), biasv, ir.Constant(_I32, 0))
            splat = _shuffle(builder, splat, splat, [0] * w)
            _store(context, builder, sig.args[4], dstv, d0v, builder.fadd(row, splat))
        return _switch(builder, widthv, range(1, 4 * TILE_COLS[-1] + 1), emit)
    return types.boolean(src, s0, s_step, bias, dst, d0, width), codegen if _contiguous(src, dst) else _declined


@intrinsic
def split_output_row(typingctx, src, s0, dst, d0, d_step, width):
    """dst[d0 + c*d_step + j] = src[s0 + 4j + c] (zero where 4j + c >= width) for c < 4, j < ceil(width
    / 4): a map row of ``width`` elements into the 4 planes of its row of output tiles (the adjoint of
    join_output_row without the bias: the F(4x4) dout gather). True where ceil(width / 4) is one of
    TILE_COLS."""
    if not _typed((src, dst), (s0, d0, d_step, width)):
        return None

    def codegen(context, builder, sig, args):
        srcv, s0v, dstv, d0v, stepv, widthv = _args(context, builder, sig, args)

        def emit(w):
            n = -(-w // 4)
            row = _load(context, builder, sig.args[0], srcv, s0v, w)
            zero = ir.Constant(row.type, None)
            for c in range(4):
                plane = _shuffle(builder, row, zero, [4 * j + c if 4 * j + c < w else w for j in range(n)])
                _store(context, builder, sig.args[2], dstv, _nth(builder, d0v, stepv, c), plane)
        return _switch(builder, widthv, range(1, 4 * TILE_COLS[-1] + 1), emit)
    return types.boolean(src, s0, dst, d0, d_step, width), codegen if _contiguous(src, dst) else _declined
