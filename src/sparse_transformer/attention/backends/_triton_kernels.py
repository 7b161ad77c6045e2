"""Triton kernels for the paper's patterns: forward and backward, reading q/k/v in the model's
(B, n, H, d) layout through strides (no copies, no transposes, no gathered K/V).

Two kernel families, each a flash-attention loop (online softmax in base 2, fp32 statistics):

``seq`` kernels see one *problem* as a sequence of rows t = 0, 1, ... at positions ``r + t·RS``:
  - ``local``:  one problem per (b, h), RS = 1; keys t' in (t - W, t]          (W = l)
  - ``stride``: l problems per (b, h), problem r holds positions r, r + l, ...; RS = l; keys
                t' <= t - EXCL (OpenAI's transposed order, read in place with a row stride of l·H·d)
  The merged ``strided`` union is two passes: local, then stride with EXCL = 1 (the diagonal is
  the local pass's), whose epilogue merges the first pass's (o, lse) (``MERGE``). Both backward
  passes use the union's lse and Δ = rowsum(dO·O), so the gradients are the union softmax's; the
  second pass adds into the first's dq/dk/dv (``ACCUM``; each position is owned by one program).

``fixed`` kernels: the own block (causal; summary cells only for a summary-only head) plus the
prior blocks' summary cells of the head's slice, read in place by index (g -> block g // c, cell
l - (s+1)·c + g % c). The backward's dk/dv come from the own block (one kernel, all keys) and,
for summary cells, from every later block (a second kernel over the summary cells that adds).

A short problem (at most 128 rows: a stride pass with n / l <= 128) runs whole in one program
(``_seq_fwd_short``, ``_seq_bwd_short``): one tile or two half tiles, and a backward that computes
each pair of tiles once for dq, dk and dv together (``_pair_step``) where the dq and dk/dv kernels
each recompute it. The band's backward can run the same way (``_band_bwd``, opt-in: slower on an
H200, see triton.py). Flat loops over several tiles (or residues) per program were tried for the
local band and the short stride passes and measured slower than the seq kernels on an H200
(bench/results/tune-h200-flat.json): they held q, dO and the restarted accumulators in registers
(248-255 a thread, two programs an SM). The persistent seq kernels (``_persistent_*``, opt-in:
slower on an H200) load every operand through the pipeline instead and restart by selects the MMAs
absorb. With ``FULL`` (opt-in until timed) the row-tile and key-tile seq kernels branch around the
mask on tile pairs that every row wholly attends (``_tile_full``).

Rows without any key (a summary-only head's first cells, a stride pass's first row) give o = 0,
lse = -inf and zero gradients. No atomics: the backward is deterministic.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, acc=None):
    """a·b (+ acc, accumulated by the MMA itself: no second register tile and add)."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


# ------------------------------------------------------------------------------------------------
# The steps every kernel shares
# ------------------------------------------------------------------------------------------------
@triton.jit
def _rows(X, base, pos, stride, d, valid):
    """Rows ``pos`` (int64) of a (B, n, H, d) tensor at head offset ``base``: (len(pos), D)."""
    return tl.load(X + base + pos[:, None] * stride + d[None, :], mask=valid[:, None], other=0.0)


@triton.jit
def _kv(K, V, kb, vb, pos, skn, svn, valid, DQK: tl.constexpr, DV: tl.constexpr):
    """Rows ``pos`` of two (B, n, H, d) tensors at head offsets kb, vb: K and V, or Q and dO."""
    return _rows(K, kb, pos, skn, tl.arange(0, DQK), valid), _rows(V, vb, pos, svn, tl.arange(0, DV), valid)


@triton.jit
def _seq_at(t0, r, RS, len_r, BLOCK: tl.constexpr):
    """Rows t0 .. t0 + BLOCK of problem r: (t, their positions int64, which exist)."""
    t = t0 + tl.arange(0, BLOCK)
    return t, (r + t * RS).to(tl.int64), t < len_r


@triton.jit
def _softmax_step(q, k, v, allowed, m_i, l_i, acc, scale_log2e, IEEE: tl.constexpr, MASKED: tl.constexpr = True,
                  full=False):
    """One key tile of the online softmax (base 2, fp32). A row with no allowed key so far keeps
    m = -inf and l = 0 (its shift is 0, so no inf - inf). The scale is applied to the row max and
    inside the exponent (one FMA an element, not a multiply and a subtract), and a tile whose every
    key is allowed (``MASKED`` false, or a run-time ``full``: a branch around the select, which the
    compiler then also skips the mask's arithmetic for) skips the select: the loop is bound by these
    per-element instructions (exp2 and FP32 ops), not by its two matmuls, at d 64 and below."""
    qk = _dot(q, tl.trans(k), IEEE)
    if MASKED:
        if not full:
            qk = tl.where(allowed, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * scale_log2e)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk * scale_log2e - m_safe[:, None])
    return m_new, l_i * alpha + tl.sum(p, 1), _dot(p.to(v.dtype), v, IEEE, acc * alpha[:, None])


@triton.jit
def _finish(acc, m_i, l_i):
    """(o, lse in natural log): 0 and -inf for a row with no key."""
    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    return o, lse


@triton.jit
def _put_rows(X, base, pos, stride, d, x, valid, ACCUM: tl.constexpr = False):
    """Store fp32 rows ``x`` at rows ``pos`` of a (B, n, H, d) tensor at head offset ``base``, added to
    what is there when ``ACCUM`` (a second pass; each row is owned by one program)."""
    ptr = X + base + pos[:, None] * stride + d[None, :]
    if ACCUM:
        x += tl.load(ptr, mask=valid[:, None], other=0.0).to(tl.float32)
    tl.store(ptr, x.to(X.dtype.element_ty), mask=valid[:, None])


@triton.jit
def _put_o(O, LSE, ob, son, lrow, pos, acc, m_i, l_i, valid, DV: tl.constexpr, MERGE: tl.constexpr = False):
    """A row tile's epilogue: o and lse (natural log) at its rows, merged with the first pass's
    (already stored there) when ``MERGE``."""
    o, lse = _finish(acc, m_i, l_i)
    optr = O + ob + pos[:, None] * son + tl.arange(0, DV)[None, :]
    if MERGE:
        o, lse = _merged(o, lse, optr, LSE + lrow, valid)
    tl.store(optr, o.to(O.dtype.element_ty), mask=valid[:, None])
    tl.store(LSE + lrow, lse, mask=valid)


@triton.jit
def _row_stats(LSE, DELTA, row, valid, NO_DELTA: tl.constexpr = False):
    """The union's lse (base 2; +inf on empty rows, so p = 0 there) and Δ = rowsum(dO·O) of rows
    ``row`` (Δ = 0 without reading when ``NO_DELTA``: the caller computes it)."""
    lse2 = tl.load(LSE + row, mask=valid, other=0.0) * 1.4426950408889634
    lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
    if NO_DELTA:
        return lse2, tl.zeros_like(lse2)
    return lse2, tl.load(DELTA + row, mask=valid, other=0.0)


@triton.jit
def _dq_rows(Q, DO, O, LSE, DELTA, qb, dob, ob, pos, sqn, sdon, son, row, valid,
             DQK: tl.constexpr, DV: tl.constexpr, ACCUM: tl.constexpr):
    """What a dq kernel holds of its rows: q, dO, the union's lse (base 2) and Δ = rowsum(dO·O);
    a first pass (not ``ACCUM``) computes Δ from registers and stores it (reading back what other
    threads of the program just stored would race), a second pass reads it."""
    q, do = _kv(Q, DO, qb, dob, pos, sqn, sdon, valid, DQK, DV)
    lse2, delta = _row_stats(LSE, DELTA, row, valid, not ACCUM)
    if not ACCUM:
        o = _rows(O, ob, pos, son, tl.arange(0, DV), valid)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + row, delta, mask=valid)
    return q, do, lse2, delta


@triton.jit
def _dq_step(q, do, k, v, allowed, lse2, delta, scale_log2e, acc, IEEE: tl.constexpr, MASKED: tl.constexpr = True,
             full=False):
    """acc + the dq contribution (unscaled) of one key tile: dS·K with dS = P ∘ (dO·Vᵀ − Δ). Without ``MASKED``
    (or with ``full``) every key must be allowed for every row that is stored (a zero-loaded key row adds dS·0)."""
    p = tl.exp2(_dot(q, tl.trans(k), IEEE) * scale_log2e - lse2[:, None])
    if MASKED:
        if not full:
            p = tl.where(allowed, p, 0.0)
    ds = p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])
    return _dot(ds.to(k.dtype), k, IEEE, acc)


@triton.jit
def _dkdv_step(k, v, q, do, allowed_t, lse2, delta, scale_log2e, dk, dv, IEEE: tl.constexpr,
               MASKED: tl.constexpr = True, full=False):
    """(dk unscaled, dv) plus the contributions of one query tile to a key tile, in transposed form.
    Without ``MASKED`` (or with ``full``) every query row must be allowed or zero-loaded (q = dO = 0,
    lse = Δ = 0 adds 0). The dv MMA is issued after dO·Vᵀ is waited for: issued before, that wait (for every MMA in
    flight) would hold it too (15-20% slower on an H200)."""
    p_t = tl.exp2(_dot(k, tl.trans(q), IEEE) * scale_log2e - lse2[None, :])
    if MASKED:
        if not full:
            p_t = tl.where(allowed_t, p_t, 0.0)
    ds_t = p_t * (_dot(v, tl.trans(do), IEEE) - delta[None, :])
    return _dot(ds_t.to(q.dtype), q, IEEE, dk), _dot(p_t.to(do.dtype), do, IEEE, dv)


# ------------------------------------------------------------------------------------------------
# seq kernels (local, stride, the two passes of strided)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _seq_problem(pid, n, Hg, RS, P, BLOCK: tl.constexpr, H0):
    """(tile, b, h, r, len_r) of program ``pid``: tiles vary fastest (neighbouring q tiles share
    K/V in L2), then the head (a position's heads are adjacent in memory: programs running together
    read whole rows of (B, n, H, d)), then the residue r, then the batch."""
    maxlen = tl.cdiv(n, RS)
    NT = tl.cdiv(maxlen, BLOCK)
    tile = pid % NT
    rest = pid // NT
    hh = rest % Hg
    rest = rest // Hg
    r = rest % P
    b = rest // P
    h = H0 + hh
    len_r = (n - r + RS - 1) // RS
    return tile, b.to(tl.int64), h.to(tl.int64), r, len_r


@triton.jit
def _seq_allowed(t, tk, W, EXCL: tl.constexpr, TRANS: tl.constexpr = False):
    """Rows t may attend keys t' in (t - W, t - EXCL]: 0 <= t - EXCL - t' < W - EXCL, one subtract
    and one unsigned compare an element (the mask is computed for every score). No key beyond the
    problem passes for a row in it (t' <= t - EXCL); rows beyond it are not stored, or (zero-loaded,
    with lse = Δ = 0) add nothing to dk and dv. ``TRANS``: keys by rows, computed in that orientation."""
    if TRANS:  # one return: the compiler wants one result type for both branches
        d = (t - EXCL)[None, :] - tk[:, None]
    else:
        d = (t - EXCL)[:, None] - tk[None, :]
    return d.to(tl.uint32) < (W - EXCL).to(tl.uint32)


@triton.jit
def _tile_full(t0, s0, W, EXCL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, FULL: tl.constexpr):
    """Whether every key of the key tile at s0 is allowed for every row of the row tile at t0 (the
    mask of _seq_allowed can be skipped): the last key is at least EXCL before the first row, and
    the first key within W of the last row. Rows beyond the problem are not stored or add zero; keys
    of a full tile are all before a row inside it, so inside the problem. Always False (the mask
    always applied, no branch compiled) without ``FULL``."""
    if not FULL:
        return False
    return (t0 - EXCL - s0 - BN + 1 >= 0) & (t0 + BM - 1 - s0 < W)


@triton.jit
def _tile_range(x0, W, len_r, EXCL: tl.constexpr, KEYS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """(lo, hi): the key tiles lo, lo + BN, ... < hi that a row tile at x0 takes, or (``KEYS``) the
    row tiles lo, lo + BM, ... < hi by which a key tile at x0 is attended."""
    if KEYS:
        return (x0 + EXCL) // BM * BM, tl.minimum(x0 + BN - 1 + W, len_r)
    return tl.maximum(x0 - W + 1, 0) // BN * BN, tl.minimum(x0 + BM - EXCL, len_r)


@triton.jit
def _merged(o, lse, optr, lptr, valid):
    """(o, lse) of the union with the first pass's softmax over disjoint keys (stored at optr, lptr),
    by log-sum-exp."""
    lse0 = tl.load(lptr, mask=valid, other=float("-inf"))
    o0 = tl.load(optr, mask=valid[:, None], other=0.0).to(tl.float32)
    mx = tl.maximum(lse0, lse)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    z = tl.exp(lse0 - mx) + tl.exp(lse - mx)
    nz = z > 0.0
    lse_u = tl.where(nz, mx + tl.log(tl.where(nz, z, 1.0)), float("-inf"))
    ref = tl.where(nz, lse_u, 0.0)
    o = o0 * tl.where(nz, tl.exp(lse0 - ref), 0.0)[:, None] + o * tl.where(nz, tl.exp(lse - ref), 0.0)[:, None]
    return o, lse_u


@triton.jit
def _seq_fwd(Q, K, V, O, LSE, H0,
             sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh,
             n, H, Hg, RS, P, W, scale_log2e,
             EXCL: tl.constexpr, MERGE: tl.constexpr, IEEE: tl.constexpr,
             DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, FULL: tl.constexpr):
    """o, lse for a tile of rows; ``FULL``: key tiles every row may wholly attend skip the mask."""
    tile, b, h, r, len_r = _seq_problem(tl.program_id(0), n, Hg, RS, P, BM, H0)
    t0 = tile * BM
    if t0 >= len_r:
        return
    t, pos, valid = _seq_at(t0, r, RS, len_r, BM)
    dq = tl.arange(0, DQK)
    q = _rows(Q, b * sqb + h * sqh, pos, sqn, dq, valid)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, DV], tl.float32)
    lo, hi = _tile_range(t0, W, len_r, EXCL, False, BM, BN)
    if EXCL == 0:  # a first pass has its diagonal tile: without this, a zero-trip path that sets acc outside
        tl.assume(hi > lo)  # the loop makes ptxas serialise every wgmma (bench/kernel_resources.py, C7515)
    for s0 in range(lo, hi, BN):
        tk, kpos, kok = _seq_at(s0, r, RS, len_r, BN)
        k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, kpos, skn, svn, kok, DQK, DV)
        m_i, l_i, acc = _softmax_step(q, k, v, _seq_allowed(t, tk, W, EXCL), m_i, l_i, acc, scale_log2e, IEEE, True,
                                      _tile_full(t0, s0, W, EXCL, BM, BN, FULL))
    _put_o(O, LSE, b * sob + h * soh, son, (b * H + h) * n + pos, pos, acc, m_i, l_i, valid, DV, MERGE)


@triton.jit
def _seq_fwd_short(Q, K, V, O, LSE, H0,
                   sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh,
                   n, H, Hg, RS, P, W, scale_log2e,
                   EXCL: tl.constexpr, MERGE: tl.constexpr, IEEE: tl.constexpr,
                   DQK: tl.constexpr, DV: tl.constexpr, T: tl.constexpr, HALF: tl.constexpr):
    """The forward of a whole short problem (at most T rows) in one program: one tile of T rows, or
    (``HALF``) two of T/2 whose first key tile is loaded once for both."""
    _, b, h, r, len_r = _seq_problem(tl.program_id(0), n, Hg, RS, P, T, H0)
    qb, kb, vb, ob = b * sqb + h * sqh, b * skb + h * skh, b * svb + h * svh, b * sob + h * soh
    rbase = (b * H + h) * n
    BM: tl.constexpr = T // 2 if HALF else T
    t, pos, ok = _seq_at(0, r, RS, len_r, BM)
    q = _rows(Q, qb, pos, sqn, tl.arange(0, DQK), ok)
    k, v = _kv(K, V, kb, vb, pos, skn, svn, ok, DQK, DV)
    m_i, l_i, acc = _softmax_step(q, k, v, _seq_allowed(t, t, W, EXCL), tl.full([BM], float("-inf"), tl.float32),
                                  tl.zeros([BM], tl.float32), tl.zeros([BM, DV], tl.float32), scale_log2e, IEEE)
    _put_o(O, LSE, ob, son, rbase + pos, pos, acc, m_i, l_i, ok, DV, MERGE)
    if HALF:
        t1, pos1, ok1 = _seq_at(BM, r, RS, len_r, BM)
        q1 = _rows(Q, qb, pos1, sqn, tl.arange(0, DQK), ok1)
        k1, v1 = _kv(K, V, kb, vb, pos1, skn, svn, ok1, DQK, DV)
        m_i, l_i, acc = _softmax_step(q1, k, v, _seq_allowed(t1, t, W, EXCL),
                                      tl.full([BM], float("-inf"), tl.float32), tl.zeros([BM], tl.float32),
                                      tl.zeros([BM, DV], tl.float32), scale_log2e, IEEE)
        m_i, l_i, acc = _softmax_step(q1, k1, v1, _seq_allowed(t1, t1, W, EXCL), m_i, l_i, acc, scale_log2e,
                                      IEEE)
        _put_o(O, LSE, ob, son, rbase + pos1, pos1, acc, m_i, l_i, ok1, DV, MERGE)


@triton.jit
def _seq_bwd_dq(Q, K, V, O, DO, DQ, LSE, DELTA, H0,
                sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh, sdob, sdon, sdoh,
                sdqb, sdqn, sdqh,
                n, H, Hg, RS, P, W, scale_log2e, scale,
                EXCL: tl.constexpr, ACCUM: tl.constexpr, IEEE: tl.constexpr,
                DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, FULL: tl.constexpr):
    """dq for a tile of rows; the first pass also computes and stores Δ = rowsum(dO·O)."""
    tile, b, h, r, len_r = _seq_problem(tl.program_id(0), n, Hg, RS, P, BM, H0)
    t0 = tile * BM
    if t0 >= len_r:
        return
    t, pos, valid = _seq_at(t0, r, RS, len_r, BM)
    dq_ = tl.arange(0, DQK)
    q, do, lse2, delta = _dq_rows(Q, DO, O, LSE, DELTA, b * sqb + h * sqh, b * sdob + h * sdoh, b * sob + h * soh, pos,
                                  sqn, sdon, son, (b * H + h) * n + pos, valid, DQK, DV, ACCUM)
    acc = tl.zeros([BM, DQK], tl.float32)
    lo, hi = _tile_range(t0, W, len_r, EXCL, False, BM, BN)
    for s0 in range(lo, hi, BN):
        tk, kpos, kok = _seq_at(s0, r, RS, len_r, BN)
        k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, kpos, skn, svn, kok, DQK, DV)
        acc = _dq_step(q, do, k, v, _seq_allowed(t, tk, W, EXCL), lse2, delta, scale_log2e, acc, IEEE, True,
                       _tile_full(t0, s0, W, EXCL, BM, BN, FULL))
    _put_rows(DQ, b * sdqb + h * sdqh, pos, sdqn, dq_, acc * scale, valid, ACCUM)


@triton.jit
def _seq_bwd_dkdv(Q, K, V, DO, DK, DV_, LSE, DELTA, H0,
                  sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdob, sdon, sdoh,
                  sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                  n, H, Hg, RS, P, W, scale_log2e, scale,
                  EXCL: tl.constexpr, ACCUM: tl.constexpr, IEEE: tl.constexpr,
                  DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, FULL: tl.constexpr):
    """dk, dv for a tile of keys, over the query rows that may attend them."""
    tile, b, h, r, len_r = _seq_problem(tl.program_id(0), n, Hg, RS, P, BN, H0)
    s0 = tile * BN
    if s0 >= len_r:
        return
    tk = s0 + tl.arange(0, BN)
    kvalid = tk < len_r
    kpos = (r + tk * RS).to(tl.int64)
    dq_, dv_ = tl.arange(0, DQK), tl.arange(0, DV)
    k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, kpos, skn, svn, kvalid, DQK, DV)
    dk = tl.zeros([BN, DQK], tl.float32)
    dv = tl.zeros([BN, DV], tl.float32)
    lo, hi = _tile_range(s0, W, len_r, EXCL, True, BM, BN)
    for t0 in range(lo, hi, BM):
        t, pos, valid = _seq_at(t0, r, RS, len_r, BM)
        q, do = _kv(Q, DO, b * sqb + h * sqh, b * sdob + h * sdoh, pos, sqn, sdon, valid, DQK, DV)
        lse2, delta = _row_stats(LSE, DELTA, (b * H + h) * n + pos, valid)
        allowed_t = _seq_allowed(t, tk, W, EXCL, True)
        dk, dv = _dkdv_step(k, v, q, do, allowed_t, lse2, delta, scale_log2e, dk, dv, IEEE, True,
                            _tile_full(t0, s0, W, EXCL, BM, BN, FULL))
    _put_rows(DK, b * sdkb + h * sdkh, kpos, sdkn, dq_, dk * scale, kvalid, ACCUM)
    _put_rows(DV_, b * sdvb + h * sdvh, kpos, sdvn, dv_, dv, kvalid, ACCUM)


# ------------------------------------------------------------------------------------------------
# persistent seq kernels (opt-in, SPARSE_TRANSFORMER_TRITON_PERSISTENT=1): OCC programs an SM, each
# walking tiles pid, pid + programs, ... of a seq pass as ONE loop over its (tile, key or row tile)
# steps, which Triton pipelines across tiles: the next tile's loads are in flight while this one
# computes, where a program per tile exposes its first loads' latency (at 16k the seq kernels' time
# splits about half and half between a cost per tile and a cost per key tile; docs/performance.md).
# The tile a step belongs to is carried (scalar state advanced at a tile's last step), every
# operand is loaded at every step through the pipeline (repeats come from L2), and state restarts
# by selects that the MMAs absorb (a zero accumulator is the MMA's "no C" flag; the softmax's alpha
# is 0 after m = -inf). Triton's own loop flattening (tl.range(flatten=True)) needs a fixed inner
# count, loads q under a branch, unpipelined, and zeroes the accumulator outside the MMA, which
# makes ptxas serialise every wgmma (bench/kernel_resources.py); its warp specialisation fails to
# compile these loops for sm_90 at 4 warps and leaves them unspecialised at 8 (Triton 3.6).
# ------------------------------------------------------------------------------------------------
@triton.jit
def _span(x0, W, len_r, EXCL: tl.constexpr, KEYS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """(first, count >= 1) of ``_tile_range``'s tiles: a tile with none still takes one (masked)
    step, which writes its epilogue."""
    lo, hi = _tile_range(x0, W, len_r, EXCL, KEYS, BM, BN)
    STEP: tl.constexpr = BM if KEYS else BN
    return lo, tl.maximum(tl.cdiv(hi - lo, STEP), 1)


@triton.jit
def _persistent_tile(tid, n, Hg, RS, P, W, H0, EXCL: tl.constexpr, KEYS: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr):
    """Tile ``tid`` (row tiles, or key tiles when ``KEYS``): (b, h, r, len_r, its first row, and the
    first and count of its steps' tiles)."""
    BLOCK: tl.constexpr = BN if KEYS else BM
    tile, b, h, r, len_r = _seq_problem(tid, n, Hg, RS, P, BLOCK, H0)
    lo, cnt = _span(tile * BLOCK, W, len_r, EXCL, KEYS, BM, BN)
    return b, h, r, len_r, tile * BLOCK, lo, cnt


@triton.jit
def _persistent_steps(n, Hg, RS, P, W, B, H0, EXCL: tl.constexpr, KEYS: tl.constexpr, BM: tl.constexpr,
                      BN: tl.constexpr):
    """(steps, programs) of this program: the steps of tiles pid, pid + programs, ..."""
    BLOCK: tl.constexpr = BN if KEYS else BM
    pid, programs = tl.program_id(0), tl.num_programs(0)
    steps = 0
    for tid in range(pid, tl.cdiv(tl.cdiv(n, RS), BLOCK) * Hg * P * B, programs):
        steps += _persistent_tile(tid, n, Hg, RS, P, W, H0, EXCL, KEYS, BM, BN)[6]
    return steps, programs


@triton.jit
def _persistent_next(j, tid, programs, b, h, r, len_r, x0, lo, cnt, n, Hg, RS, P, W, H0, EXCL: tl.constexpr,
                     KEYS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """The step after step j of tile ``tid`` (b .. cnt: its ``_persistent_tile``): (j, tid, b .. cnt)."""
    j += 1
    if j == cnt:
        tid += programs
        b, h, r, len_r, x0, lo, cnt = _persistent_tile(tid, n, Hg, RS, P, W, H0, EXCL, KEYS, BM, BN)
        j = 0
    return j, tid, b, h, r, len_r, x0, lo, cnt


@triton.jit
def _persistent_fwd(Q, K, V, O, LSE, H0,
                    sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh,
                    n, H, Hg, RS, P, W, B, scale_log2e,
                    EXCL: tl.constexpr, MERGE: tl.constexpr, IEEE: tl.constexpr,
                    DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, OCC: tl.constexpr):
    """``_seq_fwd``'s o and lse, persistent (``OCC``: programs an SM, read by the launcher)."""
    steps, programs = _persistent_steps(n, Hg, RS, P, W, B, H0, EXCL, False, BM, BN)
    tid = tl.program_id(0)
    b, h, r, len_r, t0, lo, cnt = _persistent_tile(tid, n, Hg, RS, P, W, H0, EXCL, False, BM, BN)
    j = 0
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, DV], tl.float32)
    for _ in range(steps):
        t, pos, valid = _seq_at(t0, r, RS, len_r, BM)
        q = _rows(Q, b * sqb + h * sqh, pos, sqn, tl.arange(0, DQK), valid)
        tk, kpos, kok = _seq_at(lo + j * BN, r, RS, len_r, BN)
        k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, kpos, skn, svn, kok, DQK, DV)
        m_i = tl.where(j == 0, float("-inf"), m_i)  # a new tile: alpha = 0 clears l and acc
        m_i, l_i, acc = _softmax_step(q, k, v, _seq_allowed(t, tk, W, EXCL), m_i, l_i, acc, scale_log2e, IEEE)
        if j == cnt - 1:
            _put_o(O, LSE, b * sob + h * soh, son, (b * H + h) * n + pos, pos, acc, m_i, l_i, valid, DV, MERGE)
        j, tid, b, h, r, len_r, t0, lo, cnt = _persistent_next(j, tid, programs, b, h, r, len_r, t0, lo, cnt,
                                                                n, Hg, RS, P, W, H0, EXCL, False, BM, BN)


@triton.jit
def _persistent_dq(Q, K, V, O, DO, DQ, LSE, DELTA, H0,
                   sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh, sdob, sdon, sdoh,
                   sdqb, sdqn, sdqh,
                   n, H, Hg, RS, P, W, B, scale_log2e, scale,
                   EXCL: tl.constexpr, ACCUM: tl.constexpr, IEEE: tl.constexpr,
                   DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, OCC: tl.constexpr):
    """``_seq_bwd_dq``, persistent: a first pass computes Δ = rowsum(dO·O) at a tile's first step
    (reading O only then) and stores it; a second pass reads it."""
    steps, programs = _persistent_steps(n, Hg, RS, P, W, B, H0, EXCL, False, BM, BN)
    tid = tl.program_id(0)
    b, h, r, len_r, t0, lo, cnt = _persistent_tile(tid, n, Hg, RS, P, W, H0, EXCL, False, BM, BN)
    j = 0
    delta = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, DQK], tl.float32)
    for _ in range(steps):
        t, pos, valid = _seq_at(t0, r, RS, len_r, BM)
        row = (b * H + h) * n + pos
        q, do = _kv(Q, DO, b * sqb + h * sqh, b * sdob + h * sdoh, pos, sqn, sdon, valid, DQK, DV)
        lse2, stored = _row_stats(LSE, DELTA, row, valid, not ACCUM)
        if ACCUM:
            delta = stored
        else:
            o = _rows(O, b * sob + h * soh, pos, son, tl.arange(0, DV), valid & (j == 0))
            if j == 0:
                delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
                tl.store(DELTA + row, delta, mask=valid)
        tk, kpos, kok = _seq_at(lo + j * BN, r, RS, len_r, BN)
        k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, kpos, skn, svn, kok, DQK, DV)
        acc = _dq_step(q, do, k, v, _seq_allowed(t, tk, W, EXCL), lse2, delta, scale_log2e,
                       tl.where(j == 0, 0.0, acc), IEEE)
        if j == cnt - 1:
            _put_rows(DQ, b * sdqb + h * sdqh, pos, sdqn, tl.arange(0, DQK), acc * scale, valid, ACCUM)
        j, tid, b, h, r, len_r, t0, lo, cnt = _persistent_next(j, tid, programs, b, h, r, len_r, t0, lo, cnt,
                                                                n, Hg, RS, P, W, H0, EXCL, False, BM, BN)


@triton.jit
def _persistent_dkdv(Q, K, V, DO, DK, DV_, LSE, DELTA, H0,
                     sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdob, sdon, sdoh,
                     sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                     n, H, Hg, RS, P, W, B, scale_log2e, scale,
                     EXCL: tl.constexpr, ACCUM: tl.constexpr, IEEE: tl.constexpr,
                     DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, OCC: tl.constexpr):
    """``_seq_bwd_dkdv``, persistent."""
    steps, programs = _persistent_steps(n, Hg, RS, P, W, B, H0, EXCL, True, BM, BN)
    tid = tl.program_id(0)
    b, h, r, len_r, s0, lo, cnt = _persistent_tile(tid, n, Hg, RS, P, W, H0, EXCL, True, BM, BN)
    j = 0
    dk = tl.zeros([BN, DQK], tl.float32)
    dv = tl.zeros([BN, DV], tl.float32)
    for _ in range(steps):
        tk, kpos, kvalid = _seq_at(s0, r, RS, len_r, BN)
        k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, kpos, skn, svn, kvalid, DQK, DV)
        t, pos, valid = _seq_at(lo + j * BM, r, RS, len_r, BM)
        q, do = _kv(Q, DO, b * sqb + h * sqh, b * sdob + h * sdoh, pos, sqn, sdon, valid, DQK, DV)
        lse2, delta = _row_stats(LSE, DELTA, (b * H + h) * n + pos, valid)
        dk, dv = _dkdv_step(k, v, q, do, _seq_allowed(t, tk, W, EXCL, True), lse2, delta, scale_log2e,
                            tl.where(j == 0, 0.0, dk), tl.where(j == 0, 0.0, dv), IEEE)
        if j == cnt - 1:
            _put_rows(DK, b * sdkb + h * sdkh, kpos, sdkn, tl.arange(0, DQK), dk * scale, kvalid, ACCUM)
            _put_rows(DV_, b * sdvb + h * sdvh, kpos, sdvn, tl.arange(0, DV), dv, kvalid, ACCUM)
        j, tid, b, h, r, len_r, s0, lo, cnt = _persistent_next(j, tid, programs, b, h, r, len_r, s0, lo, cnt,
                                                                n, Hg, RS, P, W, H0, EXCL, True, BM, BN)


@triton.jit
def _pair_step(q, do, k, v, allowed, lse2, delta, scale_log2e, dq, dk, dv, IEEE: tl.constexpr):
    """(dq, dk unscaled, dv) plus what one (row tile, key tile) pair gives all three: the scores and
    dP once, five MMAs (the dq and dk/dv kernels compute them twice, seven MMAs)."""
    p = tl.where(allowed, tl.exp2(_dot(q, tl.trans(k), IEEE) * scale_log2e - lse2[:, None]), 0.0)
    ds = p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])
    dv = _dot(tl.trans(p.to(do.dtype)), do, IEEE, dv)
    dk = _dot(tl.trans(ds.to(q.dtype)), q, IEEE, dk)
    return _dot(ds.to(k.dtype), k, IEEE, dq), dk, dv


@triton.jit
def _row_tile(Q, DO, O, LSE, DELTA, qb, dob, ob, sqn, sdon, son, rbase, t0, r, RS, len_r,
              ACCUM: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr):
    """What a one-program backward holds of rows t0 .. t0 + BM of problem r: (t, positions, which
    exist, q, dO, lse (base 2), Δ). A first pass computes Δ and stores it (a band tile loaded by
    several programs is stored with the same values by each; none reads it back)."""
    t, pos, ok = _seq_at(t0, r, RS, len_r, BM)
    q, do, lse2, delta = _dq_rows(Q, DO, O, LSE, DELTA, qb, dob, ob, pos, sqn, sdon, son, rbase + pos, ok, DQK, DV,
                                  ACCUM)
    return t, pos, ok, q, do, lse2, delta


@triton.jit
def _seq_bwd_short(Q, K, V, O, DO, DQ, DK, DV_, LSE, DELTA, H0,
                   sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh, sdob, sdon, sdoh,
                   sdqb, sdqn, sdqh, sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                   n, H, Hg, RS, P, W, scale_log2e, scale,
                   EXCL: tl.constexpr, ACCUM: tl.constexpr, IEEE: tl.constexpr,
                   DQK: tl.constexpr, DV: tl.constexpr, T: tl.constexpr, HALF: tl.constexpr):
    """dq, dk, dv of a whole short problem (at most T rows: a stride pass with n / l <= T) in one
    program, as one tile of T rows or (``HALF``) two of T/2: each pair of tiles is computed once,
    with no loop (the dq and dk/dv kernels, one program per tile, each recompute every pair)."""
    _, b, h, r, len_r = _seq_problem(tl.program_id(0), n, Hg, RS, P, T, H0)
    qb, kb, vb = b * sqb + h * sqh, b * skb + h * skh, b * svb + h * svh
    ob, dob = b * sob + h * soh, b * sdob + h * sdoh
    dqb, dkb, dvb = b * sdqb + h * sdqh, b * sdkb + h * sdkh, b * sdvb + h * sdvh
    rbase = (b * H + h) * n
    dq_, dv_ = tl.arange(0, DQK), tl.arange(0, DV)
    BM: tl.constexpr = T // 2 if HALF else T
    t, pos, ok, q, do, lse2, delta = _row_tile(Q, DO, O, LSE, DELTA, qb, dob, ob, sqn, sdon, son, rbase,
                                               0, r, RS, len_r, ACCUM, DQK, DV, BM)
    k, v = _kv(K, V, kb, vb, pos, skn, svn, ok, DQK, DV)
    dq, dk, dv = _pair_step(q, do, k, v, _seq_allowed(t, t, W, EXCL), lse2, delta, scale_log2e,
                            tl.zeros([BM, DQK], tl.float32), tl.zeros([BM, DQK], tl.float32),
                            tl.zeros([BM, DV], tl.float32), IEEE)
    _put_rows(DQ, dqb, pos, sdqn, dq_, dq * scale, ok, ACCUM)
    if HALF:  # the second tile's rows take the first tile's keys (which are then complete) and their own
        t1, pos1, ok1, q1, do1, lse1, delta1 = _row_tile(Q, DO, O, LSE, DELTA, qb, dob, ob, sqn, sdon, son, rbase,
                                                         BM, r, RS, len_r, ACCUM, DQK, DV, BM)
        k1, v1 = _kv(K, V, kb, vb, pos1, skn, svn, ok1, DQK, DV)
        dq1, dk, dv = _pair_step(q1, do1, k, v, _seq_allowed(t1, t, W, EXCL), lse1, delta1,
                                 scale_log2e, tl.zeros([BM, DQK], tl.float32), dk, dv, IEEE)
        _put_rows(DK, dkb, pos, sdkn, dq_, dk * scale, ok, ACCUM)
        _put_rows(DV_, dvb, pos, sdvn, dv_, dv, ok, ACCUM)
        dq1, dk1, dv1 = _pair_step(q1, do1, k1, v1, _seq_allowed(t1, t1, W, EXCL), lse1, delta1,
                                   scale_log2e, dq1, tl.zeros([BM, DQK], tl.float32), tl.zeros([BM, DV], tl.float32),
                                   IEEE)
        _put_rows(DQ, dqb, pos1, sdqn, dq_, dq1 * scale, ok1, ACCUM)
        pos, ok, dk, dv = pos1, ok1, dk1, dv1
    _put_rows(DK, dkb, pos, sdkn, dq_, dk * scale, ok, ACCUM)
    _put_rows(DV_, dvb, pos, sdvn, dv_, dv, ok, ACCUM)


@triton.jit
def _band_bwd(Q, K, V, O, DO, DQ, DK, DV_, LSE, DELTA, H0,
              sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh, sdob, sdon, sdoh,
              sdqb, sdqn, sdqh, sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
              n, H, Hg, W, scale_log2e, scale,
              IEEE: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr, TILE: tl.constexpr, CH: tl.constexpr):
    """dq, dk, dv of a band (a local pass; W <= 2·TILE + 1, so key tile j is attended by row tiles
    j, j+1, j+2 only) in one kernel: a program walks CH key tiles, computing each (row tile, key
    tile) pair once (five MMAs; the dq and dk/dv kernels take seven) and keeping the dq of the three
    row tiles in flight in registers; a row tile's dq is complete (and stored) at its own key tile.
    The first two row tiles' contributions from the previous chunk's last two key tiles are
    recomputed here (dq only), and its own last two key tiles' contributions to the next chunk's
    rows are dropped: no atomics, deterministic."""
    NT = tl.cdiv(n, TILE)
    NC = tl.cdiv(NT, CH)
    pid = tl.program_id(0)
    a = (pid % NC) * CH
    rest = pid // NC
    h = (H0 + rest % Hg).to(tl.int64)
    b = (rest // Hg).to(tl.int64)
    qb, kb, vb = b * sqb + h * sqh, b * skb + h * skh, b * svb + h * svh
    ob, dob = b * sob + h * soh, b * sdob + h * sdoh
    dqb, dkb, dvb = b * sdqb + h * sdqh, b * sdkb + h * sdkh, b * sdvb + h * sdvh
    rbase = (b * H + h) * n
    dq_, dv_ = tl.arange(0, DQK), tl.arange(0, DV)
    dqA = tl.zeros([TILE, DQK], tl.float32)  # row tile j's dq, then j+1's, then j+2's
    dqB = tl.zeros([TILE, DQK], tl.float32)
    if a > 0:  # what key tiles a-2, a-1 give row tiles a, a+1
        tA, posA, okA, qA, doA, lA, dA = _row_tile(Q, DO, O, LSE, DELTA, qb, dob, ob, sqn, sdon, son, rbase,
                                                   a * TILE, 0, 1, n, False, DQK, DV, TILE)
        tB, posB, okB, qB, doB, lB, dB = _row_tile(Q, DO, O, LSE, DELTA, qb, dob, ob, sqn, sdon, son, rbase,
                                                   (a + 1) * TILE, 0, 1, n, False, DQK, DV, TILE)
        tk, kpos, kok = _seq_at((a - 2) * TILE, 0, 1, n, TILE)
        k, v = _kv(K, V, kb, vb, kpos, skn, svn, kok, DQK, DV)
        dqA = _dq_step(qA, doA, k, v, _seq_allowed(tA, tk, W, 0) & okA[:, None], lA, dA, scale_log2e, dqA, IEEE)
        tk, kpos, kok = _seq_at((a - 1) * TILE, 0, 1, n, TILE)
        k, v = _kv(K, V, kb, vb, kpos, skn, svn, kok, DQK, DV)
        dqA = _dq_step(qA, doA, k, v, _seq_allowed(tA, tk, W, 0) & okA[:, None], lA, dA, scale_log2e, dqA, IEEE)
        dqB = _dq_step(qB, doB, k, v, _seq_allowed(tB, tk, W, 0) & okB[:, None], lB, dB, scale_log2e, dqB, IEEE)
    for j in range(a, tl.minimum(a + CH, NT)):
        tk, kpos, kok = _seq_at(j * TILE, 0, 1, n, TILE)
        k, v = _kv(K, V, kb, vb, kpos, skn, svn, kok, DQK, DV)
        t0, pos0, ok0, q0, do0, l0, d0 = _row_tile(Q, DO, O, LSE, DELTA, qb, dob, ob, sqn, sdon, son, rbase,
                                                   j * TILE, 0, 1, n, False, DQK, DV, TILE)
        dqA, dk, dv = _pair_step(q0, do0, k, v, _seq_allowed(t0, tk, W, 0) & ok0[:, None], l0, d0, scale_log2e,
                                 dqA, tl.zeros([TILE, DQK], tl.float32), tl.zeros([TILE, DV], tl.float32), IEEE)
        _put_rows(DQ, dqb, pos0, sdqn, dq_, dqA * scale, ok0)
        t1, pos1, ok1, q1, do1, l1, d1 = _row_tile(Q, DO, O, LSE, DELTA, qb, dob, ob, sqn, sdon, son, rbase,
                                                   (j + 1) * TILE, 0, 1, n, False, DQK, DV, TILE)
        dqA, dk, dv = _pair_step(q1, do1, k, v, _seq_allowed(t1, tk, W, 0) & ok1[:, None], l1, d1, scale_log2e,
                                 dqB, dk, dv, IEEE)
        t2, pos2, ok2, q2, do2, l2, d2 = _row_tile(Q, DO, O, LSE, DELTA, qb, dob, ob, sqn, sdon, son, rbase,
                                                   (j + 2) * TILE, 0, 1, n, False, DQK, DV, TILE)
        dqB, dk, dv = _pair_step(q2, do2, k, v, _seq_allowed(t2, tk, W, 0) & ok2[:, None], l2, d2, scale_log2e,
                                 tl.zeros([TILE, DQK], tl.float32), dk, dv, IEEE)
        _put_rows(DK, dkb, kpos, sdkn, dq_, dk * scale, kok)
        _put_rows(DV_, dvb, kpos, sdvn, dv_, dv, kok)


# ------------------------------------------------------------------------------------------------
# fixed kernels (block ∪ summary; block alone; summary alone)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _fixed_problem(pid, NT, Hg, H0, S, L, C):
    """(tile, b, h, off) of program ``pid``; off: the first cell of head h's summary slice h % S."""
    tile = pid % NT
    rest = pid // NT
    h = H0 + rest % Hg
    return tile, (rest // Hg).to(tl.int64), h.to(tl.int64), L - (h % S + 1) * C


@triton.jit
def _fixed_at(i0, n, BLOCK: tl.constexpr):
    """Rows i0 .. i0 + BLOCK: (i, i int64, which exist, the last that exists)."""
    i = i0 + tl.arange(0, BLOCK)
    return i, i.to(tl.int64), i < n, tl.minimum(i0 + BLOCK, n) - 1


@triton.jit
def _fixed_own_allowed(i, j, L, C, off, HAS_BLOCK: tl.constexpr, TRANS: tl.constexpr = False):
    """Own-block keys of query i: all j <= i of the block (0 <= i - j <= i mod L: one subtract and
    one unsigned compare an element; rows beyond n are not stored, or add nothing to dk and dv), or
    only its summary cells. ``TRANS``: keys by rows."""
    if TRANS:
        m = (i[None, :] - j[:, None]).to(tl.uint32) <= (i % L).to(tl.uint32)[None, :]
    else:
        m = (i[:, None] - j[None, :]).to(tl.uint32) <= (i % L).to(tl.uint32)[:, None]
    if not HAS_BLOCK:
        cell = j % L - off
        summary = (cell >= 0) & (cell < C)
        m = m & (summary[:, None] if TRANS else summary[None, :])
    return m


@triton.jit
def _summary_keys(g0, G, L, C, off, BN: tl.constexpr):
    """Gathered summary index g -> (its block, its position int64, valid) for g in [g0, g0 + BN)."""
    g = g0 + tl.arange(0, BN)
    kb = g // C
    return kb, (kb * L + off + g % C).to(tl.int64), g < G


@triton.jit
def _fixed_fwd(Q, K, V, O, LSE, H0, S,
               sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh,
               n, H, Hg, L, C, scale_log2e,
               HAS_BLOCK: tl.constexpr, HAS_SUMMARY: tl.constexpr, IEEE: tl.constexpr,
               DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    tile, b, h, off = _fixed_problem(tl.program_id(0), tl.cdiv(n, BM), Hg, H0, S, L, C)
    i0 = (tl.cdiv(n, BM) - 1 - tile) * BM  # last row tiles (the most summary keys) first: no long tail
    i, i64, valid, i_last = _fixed_at(i0, n, BM)
    dq = tl.arange(0, DQK)
    q = _rows(Q, b * sqb + h * sqh, i64, sqn, dq, valid)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, DV], tl.float32)
    if HAS_SUMMARY:  # the prior blocks' summary cells: whole tiles every row takes, then the rest
        kbase, vbase = b * skb + h * skh, b * svb + h * svh
        g_full = (i0 // L) * C // BN * BN
        for g0 in range(0, g_full, BN):
            kb, kpos, gvalid = _summary_keys(g0, g_full, L, C, off, BN)
            k, v = _kv(K, V, kbase, vbase, kpos, skn, svn, gvalid, DQK, DV)
            m_i, l_i, acc = _softmax_step(q, k, v, gvalid, m_i, l_i, acc, scale_log2e, IEEE, False)
        g_hi = (i_last // L) * C
        for g0 in range(g_full, g_hi, BN):
            kb, kpos, gvalid = _summary_keys(g0, g_hi, L, C, off, BN)
            k, v = _kv(K, V, kbase, vbase, kpos, skn, svn, gvalid, DQK, DV)
            allowed = (kb[None, :] < (i // L)[:, None]) & gvalid[None, :]
            m_i, l_i, acc = _softmax_step(q, k, v, allowed, m_i, l_i, acc, scale_log2e, IEEE)
    for j0 in range((i0 // L * L) // BN * BN, i_last + 1, BN):  # the own block, causal
        j = j0 + tl.arange(0, BN)
        k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, j.to(tl.int64), skn, svn, j < n, DQK, DV)
        allowed = _fixed_own_allowed(i, j, L, C, off, HAS_BLOCK)
        m_i, l_i, acc = _softmax_step(q, k, v, allowed, m_i, l_i, acc, scale_log2e, IEEE)
    _put_o(O, LSE, b * sob + h * soh, son, (b * H + h) * n + i64, i64, acc, m_i, l_i, valid, DV)


@triton.jit
def _fixed_bwd_dq(Q, K, V, O, DO, DQ, LSE, DELTA, H0, S,
                  sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh, sdob, sdon, sdoh,
                  sdqb, sdqn, sdqh,
                  n, H, Hg, L, C, scale_log2e, scale,
                  HAS_BLOCK: tl.constexpr, HAS_SUMMARY: tl.constexpr, IEEE: tl.constexpr,
                  DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """dq (both loops of the forward); also computes and stores Δ = rowsum(dO·O)."""
    tile, b, h, off = _fixed_problem(tl.program_id(0), tl.cdiv(n, BM), Hg, H0, S, L, C)
    i0 = (tl.cdiv(n, BM) - 1 - tile) * BM  # the longest rows first, as in the forward
    i, i64, valid, i_last = _fixed_at(i0, n, BM)
    dq_ = tl.arange(0, DQK)
    q, do, lse2, delta = _dq_rows(Q, DO, O, LSE, DELTA, b * sqb + h * sqh, b * sdob + h * sdoh, b * sob + h * soh, i64,
                                  sqn, sdon, son, (b * H + h) * n + i64, valid, DQK, DV, False)
    acc = tl.zeros([BM, DQK], tl.float32)
    if HAS_SUMMARY:  # as in the forward: whole tiles unmasked, then the rest
        kbase, vbase = b * skb + h * skh, b * svb + h * svh
        g_full = (i0 // L) * C // BN * BN
        for g0 in range(0, g_full, BN):
            kb, kpos, gvalid = _summary_keys(g0, g_full, L, C, off, BN)
            k, v = _kv(K, V, kbase, vbase, kpos, skn, svn, gvalid, DQK, DV)
            acc = _dq_step(q, do, k, v, gvalid, lse2, delta, scale_log2e, acc, IEEE, False)
        g_hi = (i_last // L) * C
        for g0 in range(g_full, g_hi, BN):
            kb, kpos, gvalid = _summary_keys(g0, g_hi, L, C, off, BN)
            k, v = _kv(K, V, kbase, vbase, kpos, skn, svn, gvalid, DQK, DV)
            allowed = (kb[None, :] < (i // L)[:, None]) & gvalid[None, :]
            acc = _dq_step(q, do, k, v, allowed, lse2, delta, scale_log2e, acc, IEEE)
    for j0 in range((i0 // L * L) // BN * BN, i_last + 1, BN):
        j = j0 + tl.arange(0, BN)
        k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, j.to(tl.int64), skn, svn, j < n, DQK, DV)
        acc = _dq_step(q, do, k, v, _fixed_own_allowed(i, j, L, C, off, HAS_BLOCK), lse2, delta, scale_log2e, acc, IEEE)
    _put_rows(DQ, b * sdqb + h * sdqh, i64, sdqn, dq_, acc * scale, valid)


@triton.jit
def _fixed_bwd_dkdv_own(Q, K, V, DO, DK, DV_, LSE, DELTA, H0, S,
                        sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdob, sdon, sdoh,
                        sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                        n, H, Hg, L, C, scale_log2e, scale,
                        HAS_BLOCK: tl.constexpr, IEEE: tl.constexpr,
                        DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """dk, dv of every key from the queries of its own block (writes all of dk, dv)."""
    tile, b, h, off = _fixed_problem(tl.program_id(0), tl.cdiv(n, BN), Hg, H0, S, L, C)
    j0 = tile * BN
    j = j0 + tl.arange(0, BN)
    jvalid = j < n
    j64 = j.to(tl.int64)
    dq_, dv_ = tl.arange(0, DQK), tl.arange(0, DV)
    k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, j64, skn, svn, jvalid, DQK, DV)
    dk = tl.zeros([BN, DQK], tl.float32)
    dv = tl.zeros([BN, DV], tl.float32)
    j_last = tl.minimum(j0 + BN, n) - 1
    for i0 in range(j0 // BM * BM, tl.minimum((j_last // L + 1) * L, n), BM):
        i = i0 + tl.arange(0, BM)
        valid = i < n
        i64 = i.to(tl.int64)
        q, do = _kv(Q, DO, b * sqb + h * sqh, b * sdob + h * sdoh, i64, sqn, sdon, valid, DQK, DV)
        lse2, delta = _row_stats(LSE, DELTA, (b * H + h) * n + i64, valid)
        allowed_t = _fixed_own_allowed(i, j, L, C, off, HAS_BLOCK, True)
        dk, dv = _dkdv_step(k, v, q, do, allowed_t, lse2, delta, scale_log2e, dk, dv, IEEE)
    _put_rows(DK, b * sdkb + h * sdkh, j64, sdkn, dq_, dk * scale, jvalid)
    _put_rows(DV_, b * sdvb + h * sdvh, j64, sdvn, dv_, dv, jvalid)


@triton.jit
def _fixed_bwd_dkdv_summary(Q, K, V, DO, DK, DV_, LSE, DELTA, H0, S,
                            sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdob, sdon, sdoh,
                            sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                            n, H, Hg, L, C, G, scale_log2e, scale,
                            IEEE: tl.constexpr,
                            DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Adds to the summary cells' dk, dv what every later block's queries contribute."""
    tile, b, h, off = _fixed_problem(tl.program_id(0), tl.cdiv(G, BN), Hg, H0, S, L, C)
    kb, kpos, gvalid = _summary_keys(tile * BN, G, L, C, off, BN)
    dq_, dv_ = tl.arange(0, DQK), tl.arange(0, DV)
    k, v = _kv(K, V, b * skb + h * skh, b * svb + h * svh, kpos, skn, svn, gvalid, DQK, DV)
    dk = tl.zeros([BN, DQK], tl.float32)
    dv = tl.zeros([BN, DV], tl.float32)
    first = ((tile * BN) // C + 1) * L  # the block after the tile's first summary cell
    # from the block after its last cell on, every query takes every key of the tile: unmasked
    full = tl.cdiv(((tl.minimum(tile * BN + BN, G) - 1) // C + 1) * L, BM) * BM
    qbase, dobase = b * sqb + h * sqh, b * sdob + h * sdoh
    for i0 in range(first // BM * BM, tl.minimum(full, n), BM):
        i = i0 + tl.arange(0, BM)
        valid = i < n
        i64 = i.to(tl.int64)
        q, do = _kv(Q, DO, qbase, dobase, i64, sqn, sdon, valid, DQK, DV)
        lse2, delta = _row_stats(LSE, DELTA, (b * H + h) * n + i64, valid)
        allowed_t = (kb[:, None] < (i // L)[None, :]) & gvalid[:, None] & valid[None, :]
        dk, dv = _dkdv_step(k, v, q, do, allowed_t, lse2, delta, scale_log2e, dk, dv, IEEE)
    for i0 in range(tl.maximum(full, first // BM * BM), n, BM):
        i = i0 + tl.arange(0, BM)
        valid = i < n
        i64 = i.to(tl.int64)
        q, do = _kv(Q, DO, qbase, dobase, i64, sqn, sdon, valid, DQK, DV)
        lse2, delta = _row_stats(LSE, DELTA, (b * H + h) * n + i64, valid)
        dk, dv = _dkdv_step(k, v, q, do, valid, lse2, delta, scale_log2e, dk, dv, IEEE, False)
    _put_rows(DK, b * sdkb + h * sdkh, kpos, sdkn, dq_, dk * scale, gvalid, True)
    _put_rows(DV_, b * sdvb + h * sdvh, kpos, sdvn, dv_, dv, gvalid, True)
