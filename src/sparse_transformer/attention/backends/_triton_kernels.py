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

Rows without any key (a summary-only head's first cells, a stride pass's first row) give o = 0,
lse = -inf and zero gradients. No atomics: the backward is deterministic.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


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
    return tile, b, h, r, len_r


@triton.jit
def _seq_fwd(Q, K, V, O, LSE, H0,
             sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh,
             n, H, Hg, RS, P, W, scale_log2e,
             EXCL: tl.constexpr, MERGE: tl.constexpr, IEEE: tl.constexpr,
             DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    tile, b, h, r, len_r = _seq_problem(tl.program_id(0), n, Hg, RS, P, BM, H0)
    t0 = tile * BM
    if t0 >= len_r:
        return
    t = t0 + tl.arange(0, BM)
    pos = (r + t * RS).to(tl.int64)
    tvalid = t < len_r
    dq = tl.arange(0, DQK)
    dv = tl.arange(0, DV)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q = tl.load(Q + b64 * sqb + h64 * sqh + pos[:, None] * sqn + dq[None, :], mask=tvalid[:, None], other=0.0)

    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, DV], tl.float32)
    lo = tl.maximum(t0 - W + 1, 0) // BN * BN
    hi = tl.minimum(t0 + BM - EXCL, len_r)
    kbase = K + b64 * skb + h64 * skh
    vbase = V + b64 * svb + h64 * svh
    for s0 in range(lo, hi, BN):
        tk = s0 + tl.arange(0, BN)
        kvalid = tk < len_r
        kpos = (r + tk * RS).to(tl.int64)
        k = tl.load(kbase + kpos[:, None] * skn + dq[None, :], mask=kvalid[:, None], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * scale_log2e
        allowed = (tk[None, :] <= t[:, None] - EXCL) & (t[:, None] - tk[None, :] < W) & kvalid[None, :]
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(vbase + kpos[:, None] * svn + dv[None, :], mask=kvalid[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new

    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    optr = O + b64 * sob + h64 * soh + pos[:, None] * son + dv[None, :]
    lptr = LSE + (b64 * H + h64) * n + pos
    if MERGE:  # union with the first pass's softmax over disjoint keys, by log-sum-exp
        lse0 = tl.load(lptr, mask=tvalid, other=float("-inf"))
        o0 = tl.load(optr, mask=tvalid[:, None], other=0.0).to(tl.float32)
        mx = tl.maximum(lse0, lse)
        mx = tl.where(mx == float("-inf"), 0.0, mx)
        z = tl.exp(lse0 - mx) + tl.exp(lse - mx)
        nz = z > 0.0
        lse_u = tl.where(nz, mx + tl.log(tl.where(nz, z, 1.0)), float("-inf"))
        ref = tl.where(nz, lse_u, 0.0)
        w0 = tl.where(nz, tl.exp(lse0 - ref), 0.0)
        w1 = tl.where(nz, tl.exp(lse - ref), 0.0)
        o = o0 * w0[:, None] + o * w1[:, None]
        lse = lse_u
    tl.store(optr, o.to(O.dtype.element_ty), mask=tvalid[:, None])
    tl.store(lptr, lse, mask=tvalid)


@triton.jit
def _seq_bwd_dq(Q, K, V, O, DO, DQ, LSE, DELTA, H0,
                sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh, sdob, sdon, sdoh,
                sdqb, sdqn, sdqh,
                n, H, Hg, RS, P, W, scale_log2e, scale,
                EXCL: tl.constexpr, ACCUM: tl.constexpr, IEEE: tl.constexpr,
                DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """dq for a tile of rows; the first pass also computes and stores Δ = rowsum(dO·O)."""
    tile, b, h, r, len_r = _seq_problem(tl.program_id(0), n, Hg, RS, P, BM, H0)
    t0 = tile * BM
    if t0 >= len_r:
        return
    t = t0 + tl.arange(0, BM)
    pos = (r + t * RS).to(tl.int64)
    tvalid = t < len_r
    dq_ = tl.arange(0, DQK)
    dv_ = tl.arange(0, DV)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q = tl.load(Q + b64 * sqb + h64 * sqh + pos[:, None] * sqn + dq_[None, :], mask=tvalid[:, None], other=0.0)
    do = tl.load(DO + b64 * sdob + h64 * sdoh + pos[:, None] * sdon + dv_[None, :], mask=tvalid[:, None], other=0.0)
    row = (b64 * H + h64) * n + pos
    lse2 = tl.load(LSE + row, mask=tvalid, other=0.0) * 1.4426950408889634
    lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)  # empty rows: p = 0
    if ACCUM:
        delta = tl.load(DELTA + row, mask=tvalid, other=0.0)
    else:
        o = tl.load(O + b64 * sob + h64 * soh + pos[:, None] * son + dv_[None, :], mask=tvalid[:, None], other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + row, delta, mask=tvalid)

    acc = tl.zeros([BM, DQK], tl.float32)
    lo = tl.maximum(t0 - W + 1, 0) // BN * BN
    hi = tl.minimum(t0 + BM - EXCL, len_r)
    kbase = K + b64 * skb + h64 * skh
    vbase = V + b64 * svb + h64 * svh
    for s0 in range(lo, hi, BN):
        tk = s0 + tl.arange(0, BN)
        kvalid = tk < len_r
        kpos = (r + tk * RS).to(tl.int64)
        k = tl.load(kbase + kpos[:, None] * skn + dq_[None, :], mask=kvalid[:, None], other=0.0)
        v = tl.load(vbase + kpos[:, None] * svn + dv_[None, :], mask=kvalid[:, None], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * scale_log2e
        allowed = (tk[None, :] <= t[:, None] - EXCL) & (t[:, None] - tk[None, :] < W) & kvalid[None, :]
        p = tl.where(allowed, tl.exp2(s - lse2[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), IEEE)
        ds = p * (dp - delta[:, None])
        acc += _dot(ds.to(k.dtype), k, IEEE)
    acc = acc * scale
    dqptr = DQ + b64 * sdqb + h64 * sdqh + pos[:, None] * sdqn + dq_[None, :]
    if ACCUM:
        acc += tl.load(dqptr, mask=tvalid[:, None], other=0.0).to(tl.float32)
    tl.store(dqptr, acc.to(DQ.dtype.element_ty), mask=tvalid[:, None])


@triton.jit
def _seq_bwd_dkdv(Q, K, V, DO, DK, DV_, LSE, DELTA, H0,
                  sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdob, sdon, sdoh,
                  sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                  n, H, Hg, RS, P, W, scale_log2e, scale,
                  EXCL: tl.constexpr, ACCUM: tl.constexpr, IEEE: tl.constexpr,
                  DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """dk, dv for a tile of keys, over the query rows that may attend them."""
    tile, b, h, r, len_r = _seq_problem(tl.program_id(0), n, Hg, RS, P, BN, H0)
    s0 = tile * BN
    if s0 >= len_r:
        return
    tk = s0 + tl.arange(0, BN)
    kvalid = tk < len_r
    kpos = (r + tk * RS).to(tl.int64)
    dq_ = tl.arange(0, DQK)
    dv_ = tl.arange(0, DV)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    k = tl.load(K + b64 * skb + h64 * skh + kpos[:, None] * skn + dq_[None, :], mask=kvalid[:, None], other=0.0)
    v = tl.load(V + b64 * svb + h64 * svh + kpos[:, None] * svn + dv_[None, :], mask=kvalid[:, None], other=0.0)
    dk = tl.zeros([BN, DQK], tl.float32)
    dv = tl.zeros([BN, DV], tl.float32)
    lo = (s0 + EXCL) // BM * BM
    hi = tl.minimum(s0 + BN - 1 + W, len_r)
    qbase = Q + b64 * sqb + h64 * sqh
    dobase = DO + b64 * sdob + h64 * sdoh
    rowbase = (b64 * H + h64) * n
    for t0 in range(lo, hi, BM):
        t = t0 + tl.arange(0, BM)
        tvalid = t < len_r
        pos = (r + t * RS).to(tl.int64)
        q = tl.load(qbase + pos[:, None] * sqn + dq_[None, :], mask=tvalid[:, None], other=0.0)
        do = tl.load(dobase + pos[:, None] * sdon + dv_[None, :], mask=tvalid[:, None], other=0.0)
        lse2 = tl.load(LSE + rowbase + pos, mask=tvalid, other=0.0) * 1.4426950408889634
        lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
        delta = tl.load(DELTA + rowbase + pos, mask=tvalid, other=0.0)
        sT = _dot(k, tl.trans(q), IEEE) * scale_log2e
        allowed = (tk[:, None] <= t[None, :] - EXCL) & (t[None, :] - tk[:, None] < W) & tvalid[None, :] & kvalid[:, None]
        pT = tl.where(allowed, tl.exp2(sT - lse2[None, :]), 0.0)
        dv += _dot(pT.to(do.dtype), do, IEEE)
        dpT = _dot(v, tl.trans(do), IEEE)
        dsT = pT * (dpT - delta[None, :])
        dk += _dot(dsT.to(q.dtype), q, IEEE)
    dk = dk * scale
    dkptr = DK + b64 * sdkb + h64 * sdkh + kpos[:, None] * sdkn + dq_[None, :]
    dvptr = DV_ + b64 * sdvb + h64 * sdvh + kpos[:, None] * sdvn + dv_[None, :]
    if ACCUM:
        dk += tl.load(dkptr, mask=kvalid[:, None], other=0.0).to(tl.float32)
        dv += tl.load(dvptr, mask=kvalid[:, None], other=0.0).to(tl.float32)
    tl.store(dkptr, dk.to(DK.dtype.element_ty), mask=kvalid[:, None])
    tl.store(dvptr, dv.to(DV_.dtype.element_ty), mask=kvalid[:, None])


# ------------------------------------------------------------------------------------------------
# fixed kernels (block ∪ summary; block alone; summary alone)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _fixed_problem(pid, n, Hg, BLOCK: tl.constexpr, H0, S, L, C):
    NT = tl.cdiv(n, BLOCK)
    tile = pid % NT
    rest = pid // NT
    hh = rest % Hg
    b = rest // Hg
    h = H0 + hh
    off = L - (h % S + 1) * C  # first cell of the head's summary slice (h % S) in a block
    return tile, b, h, off


@triton.jit
def _fixed_own_allowed(i, j, n, L, C, off, HAS_BLOCK: tl.constexpr):
    """Own-block keys of query i: all j <= i of the block, or only its summary cells."""
    m = (j[None, :] <= i[:, None]) & (j[None, :] // L == i[:, None] // L) & (j[None, :] < n)
    if not HAS_BLOCK:
        cell = j % L - off
        m = m & ((cell >= 0) & (cell < C))[None, :]
    return m


@triton.jit
def _fixed_fwd(Q, K, V, O, LSE, H0, S,
               sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh,
               n, H, Hg, L, C, scale_log2e,
               HAS_BLOCK: tl.constexpr, HAS_SUMMARY: tl.constexpr, IEEE: tl.constexpr,
               DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    tile, b, h, off = _fixed_problem(tl.program_id(0), n, Hg, BM, H0, S, L, C)
    i0 = tile * BM
    i = i0 + tl.arange(0, BM)
    ivalid = i < n
    i_last = tl.minimum(i0 + BM, n) - 1
    dq = tl.arange(0, DQK)
    dv = tl.arange(0, DV)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q = tl.load(Q + b64 * sqb + h64 * sqh + i[:, None].to(tl.int64) * sqn + dq[None, :], mask=ivalid[:, None], other=0.0)
    kbase = K + b64 * skb + h64 * skh
    vbase = V + b64 * svb + h64 * svh
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, DV], tl.float32)
    blk_i = i // L
    if HAS_SUMMARY:  # the prior blocks' summary cells: gathered index g -> block g // C
        g_hi = (i_last // L) * C
        for g0 in range(0, g_hi, BN):
            g = g0 + tl.arange(0, BN)
            gvalid = g < g_hi
            kb = g // C
            kpos = (kb * L + off + g % C).to(tl.int64)
            k = tl.load(kbase + kpos[:, None] * skn + dq[None, :], mask=gvalid[:, None], other=0.0)
            s = _dot(q, tl.trans(k), IEEE) * scale_log2e
            s = tl.where((kb[None, :] < blk_i[:, None]) & gvalid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(vbase + kpos[:, None] * svn + dv[None, :], mask=gvalid[:, None], other=0.0)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
            m_i = m_new
    lo = (i0 // L * L) // BN * BN
    for j0 in range(lo, i_last + 1, BN):  # the own block, causal
        j = j0 + tl.arange(0, BN)
        jvalid = j < n
        k = tl.load(kbase + j[:, None].to(tl.int64) * skn + dq[None, :], mask=jvalid[:, None], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * scale_log2e
        s = tl.where(_fixed_own_allowed(i, j, n, L, C, off, HAS_BLOCK), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(vbase + j[:, None].to(tl.int64) * svn + dv[None, :], mask=jvalid[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    empty = l_i == 0.0
    o = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(O + b64 * sob + h64 * soh + i[:, None].to(tl.int64) * son + dv[None, :], o.to(O.dtype.element_ty), mask=ivalid[:, None])
    tl.store(LSE + (b64 * H + h64) * n + i, lse, mask=ivalid)


@triton.jit
def _fixed_bwd_dq(Q, K, V, O, DO, DQ, LSE, DELTA, H0, S,
                  sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sob, son, soh, sdob, sdon, sdoh,
                  sdqb, sdqn, sdqh,
                  n, H, Hg, L, C, scale_log2e, scale,
                  HAS_BLOCK: tl.constexpr, HAS_SUMMARY: tl.constexpr, IEEE: tl.constexpr,
                  DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    tile, b, h, off = _fixed_problem(tl.program_id(0), n, Hg, BM, H0, S, L, C)
    i0 = tile * BM
    i = i0 + tl.arange(0, BM)
    ivalid = i < n
    i_last = tl.minimum(i0 + BM, n) - 1
    dq_ = tl.arange(0, DQK)
    dv_ = tl.arange(0, DV)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    i64 = i.to(tl.int64)
    q = tl.load(Q + b64 * sqb + h64 * sqh + i64[:, None] * sqn + dq_[None, :], mask=ivalid[:, None], other=0.0)
    do = tl.load(DO + b64 * sdob + h64 * sdoh + i64[:, None] * sdon + dv_[None, :], mask=ivalid[:, None], other=0.0)
    o = tl.load(O + b64 * sob + h64 * soh + i64[:, None] * son + dv_[None, :], mask=ivalid[:, None], other=0.0)
    row = (b64 * H + h64) * n + i64
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + row, delta, mask=ivalid)
    lse2 = tl.load(LSE + row, mask=ivalid, other=0.0) * 1.4426950408889634
    lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
    kbase = K + b64 * skb + h64 * skh
    vbase = V + b64 * svb + h64 * svh
    acc = tl.zeros([BM, DQK], tl.float32)
    blk_i = i // L
    if HAS_SUMMARY:
        g_hi = (i_last // L) * C
        for g0 in range(0, g_hi, BN):
            g = g0 + tl.arange(0, BN)
            gvalid = g < g_hi
            kb = g // C
            kpos = (kb * L + off + g % C).to(tl.int64)
            k = tl.load(kbase + kpos[:, None] * skn + dq_[None, :], mask=gvalid[:, None], other=0.0)
            v = tl.load(vbase + kpos[:, None] * svn + dv_[None, :], mask=gvalid[:, None], other=0.0)
            s = _dot(q, tl.trans(k), IEEE) * scale_log2e
            p = tl.where((kb[None, :] < blk_i[:, None]) & gvalid[None, :], tl.exp2(s - lse2[:, None]), 0.0)
            dp = _dot(do, tl.trans(v), IEEE)
            acc += _dot((p * (dp - delta[:, None])).to(k.dtype), k, IEEE)
    lo = (i0 // L * L) // BN * BN
    for j0 in range(lo, i_last + 1, BN):
        j = j0 + tl.arange(0, BN)
        jvalid = j < n
        k = tl.load(kbase + j[:, None].to(tl.int64) * skn + dq_[None, :], mask=jvalid[:, None], other=0.0)
        v = tl.load(vbase + j[:, None].to(tl.int64) * svn + dv_[None, :], mask=jvalid[:, None], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * scale_log2e
        p = tl.where(_fixed_own_allowed(i, j, n, L, C, off, HAS_BLOCK), tl.exp2(s - lse2[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), IEEE)
        acc += _dot((p * (dp - delta[:, None])).to(k.dtype), k, IEEE)
    acc = acc * scale
    tl.store(DQ + b64 * sdqb + h64 * sdqh + i64[:, None] * sdqn + dq_[None, :], acc.to(DQ.dtype.element_ty), mask=ivalid[:, None])


@triton.jit
def _fixed_bwd_dkdv_own(Q, K, V, DO, DK, DV_, LSE, DELTA, H0, S,
                        sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdob, sdon, sdoh,
                        sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                        n, H, Hg, L, C, scale_log2e, scale,
                        HAS_BLOCK: tl.constexpr, IEEE: tl.constexpr,
                        DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """dk, dv of every key from the queries of its own block (writes all of dk, dv)."""
    tile, b, h, off = _fixed_problem(tl.program_id(0), n, Hg, BN, H0, S, L, C)
    j0 = tile * BN
    j = j0 + tl.arange(0, BN)
    jvalid = j < n
    j64 = j.to(tl.int64)
    dq_ = tl.arange(0, DQK)
    dv_ = tl.arange(0, DV)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    k = tl.load(K + b64 * skb + h64 * skh + j64[:, None] * skn + dq_[None, :], mask=jvalid[:, None], other=0.0)
    v = tl.load(V + b64 * svb + h64 * svh + j64[:, None] * svn + dv_[None, :], mask=jvalid[:, None], other=0.0)
    dk = tl.zeros([BN, DQK], tl.float32)
    dv = tl.zeros([BN, DV], tl.float32)
    j_last = tl.minimum(j0 + BN, n) - 1
    hi = tl.minimum((j_last // L + 1) * L, n)
    qbase = Q + b64 * sqb + h64 * sqh
    dobase = DO + b64 * sdob + h64 * sdoh
    rowbase = (b64 * H + h64) * n
    for i0 in range(j0 // BM * BM, hi, BM):
        i = i0 + tl.arange(0, BM)
        ivalid = i < n
        i64 = i.to(tl.int64)
        q = tl.load(qbase + i64[:, None] * sqn + dq_[None, :], mask=ivalid[:, None], other=0.0)
        do = tl.load(dobase + i64[:, None] * sdon + dv_[None, :], mask=ivalid[:, None], other=0.0)
        lse2 = tl.load(LSE + rowbase + i64, mask=ivalid, other=0.0) * 1.4426950408889634
        lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
        delta = tl.load(DELTA + rowbase + i64, mask=ivalid, other=0.0)
        sT = _dot(k, tl.trans(q), IEEE) * scale_log2e
        allowed = tl.trans(_fixed_own_allowed(i, j, n, L, C, off, HAS_BLOCK)) & ivalid[None, :]
        pT = tl.where(allowed, tl.exp2(sT - lse2[None, :]), 0.0)
        dv += _dot(pT.to(do.dtype), do, IEEE)
        dpT = _dot(v, tl.trans(do), IEEE)
        dk += _dot((pT * (dpT - delta[None, :])).to(q.dtype), q, IEEE)
    dk = dk * scale
    tl.store(DK + b64 * sdkb + h64 * sdkh + j64[:, None] * sdkn + dq_[None, :], dk.to(DK.dtype.element_ty), mask=jvalid[:, None])
    tl.store(DV_ + b64 * sdvb + h64 * sdvh + j64[:, None] * sdvn + dv_[None, :], dv.to(DV_.dtype.element_ty), mask=jvalid[:, None])


@triton.jit
def _fixed_bwd_dkdv_summary(Q, K, V, DO, DK, DV_, LSE, DELTA, H0, S,
                            sqb, sqn, sqh, skb, skn, skh, svb, svn, svh, sdob, sdon, sdoh,
                            sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                            n, H, Hg, L, C, G, scale_log2e, scale,
                            IEEE: tl.constexpr,
                            DQK: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Adds to the summary cells' dk, dv what every later block's queries contribute."""
    NT = tl.cdiv(G, BN)
    pid = tl.program_id(0)
    tile = pid % NT
    rest = pid // NT
    hh = rest % Hg
    b = rest // Hg
    h = H0 + hh
    off = L - (h % S + 1) * C
    g = tile * BN + tl.arange(0, BN)
    gvalid = g < G
    kb = g // C
    kpos = (kb * L + off + g % C).to(tl.int64)
    dq_ = tl.arange(0, DQK)
    dv_ = tl.arange(0, DV)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    k = tl.load(K + b64 * skb + h64 * skh + kpos[:, None] * skn + dq_[None, :], mask=gvalid[:, None], other=0.0)
    v = tl.load(V + b64 * svb + h64 * svh + kpos[:, None] * svn + dv_[None, :], mask=gvalid[:, None], other=0.0)
    dk = tl.zeros([BN, DQK], tl.float32)
    dv = tl.zeros([BN, DV], tl.float32)
    qbase = Q + b64 * sqb + h64 * sqh
    dobase = DO + b64 * sdob + h64 * sdoh
    rowbase = (b64 * H + h64) * n
    first = ((tile * BN) // C + 1) * L  # the block after the tile's first summary cell
    for i0 in range(first // BM * BM, n, BM):
        i = i0 + tl.arange(0, BM)
        ivalid = i < n
        i64 = i.to(tl.int64)
        q = tl.load(qbase + i64[:, None] * sqn + dq_[None, :], mask=ivalid[:, None], other=0.0)
        do = tl.load(dobase + i64[:, None] * sdon + dv_[None, :], mask=ivalid[:, None], other=0.0)
        lse2 = tl.load(LSE + rowbase + i64, mask=ivalid, other=0.0) * 1.4426950408889634
        lse2 = tl.where(lse2 == float("-inf"), float("inf"), lse2)
        delta = tl.load(DELTA + rowbase + i64, mask=ivalid, other=0.0)
        sT = _dot(k, tl.trans(q), IEEE) * scale_log2e
        allowed = (kb[:, None] < (i // L)[None, :]) & gvalid[:, None] & ivalid[None, :]
        pT = tl.where(allowed, tl.exp2(sT - lse2[None, :]), 0.0)
        dv += _dot(pT.to(do.dtype), do, IEEE)
        dpT = _dot(v, tl.trans(do), IEEE)
        dk += _dot((pT * (dpT - delta[None, :])).to(q.dtype), q, IEEE)
    dkptr = DK + b64 * sdkb + h64 * sdkh + kpos[:, None] * sdkn + dq_[None, :]
    dvptr = DV_ + b64 * sdvb + h64 * sdvh + kpos[:, None] * sdvn + dv_[None, :]
    dk = dk * scale + tl.load(dkptr, mask=gvalid[:, None], other=0.0).to(tl.float32)
    dv = dv + tl.load(dvptr, mask=gvalid[:, None], other=0.0).to(tl.float32)
    tl.store(dkptr, dk.to(DK.dtype.element_ty), mask=gvalid[:, None])
    tl.store(dvptr, dv.to(DV_.dtype.element_ty), mask=gvalid[:, None])
