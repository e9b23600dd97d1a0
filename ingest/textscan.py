"""Compiled (numba) scanner for Prometheus text and OpenMetrics lines, one chunk of bytes at a time.

`scan_chunk` walks a buffer of whole lines once and returns, per sample line, where its series
text and value token are, its timestamp in integer milliseconds (OpenMetrics seconds converted
from their digits, sub-millisecond digits rounded half to even — never float x 1000) and a
64-bit hash of the series text. Comments, blank lines and the first structurally malformed line
are reported back for the Python side, which owns every error message. Values are not parsed
here: `gather_spans` copies their tokens into one Arrow string buffer and Arrow's correctly
rounded string->float cast parses them.

The polars parser in `ingest.textformat` is the slow oracle the tests compare against.
"""

from __future__ import annotations

import numpy as np
from blocks.jit import jit as _jit

# Line kinds
SAMPLE, COMMENT, BLANK, MALFORMED = 0, 1, 2, 3
# Timestamp status per sample line
TS_OK, TS_ROUNDED, TS_SLOW, TS_INVALID, TS_MISSING = 0, 1, 2, 3, 4




@_jit
def _is_space(c):
    return c == 32 or c == 9


@_jit
def _name_start(c):
    return (65 <= c <= 90) or (97 <= c <= 122) or c == 95 or c == 58


@_jit
def _name_char(c):
    return _name_start(c) or (48 <= c <= 57)


@_jit
def _parse_ts(buf, a, b, om):
    """(ms, status) of the token buf[a:b]."""
    neg = False
    i = a
    if i < b and buf[i] == 45:  # '-'
        neg = True
        i += 1
    if i >= b:
        return 0, TS_INVALID
    whole = 0
    nd = 0
    while i < b and 48 <= buf[i] <= 57:
        whole = whole * 10 + (buf[i] - 48)
        nd += 1
        i += 1
        if nd > 18:
            return 0, TS_SLOW if om else TS_INVALID
    if nd == 0:
        return 0, TS_SLOW if om else TS_INVALID
    if not om:
        if i != b:
            return 0, TS_INVALID
        return (-whole if neg else whole), TS_OK
    if nd > 15:
        return 0, TS_SLOW
    frac = 0
    fd = 0
    status = TS_OK
    round_up = False
    if i < b and buf[i] == 46:  # '.'
        i += 1
        first_rest = -1
        rest_nonzero = False
        while i < b and 48 <= buf[i] <= 57:
            d = buf[i] - 48
            if fd < 3:
                frac = frac * 10 + d
            elif fd == 3:
                first_rest = d
            elif d != 0:
                rest_nonzero = True
            fd += 1
            i += 1
        while fd < 3:
            frac *= 10
            fd += 1
        if first_rest >= 0:
            if first_rest != 0 or rest_nonzero:
                status = TS_ROUNDED
            if first_rest > 5 or (first_rest == 5 and rest_nonzero):
                round_up = True
            elif first_rest == 5:
                round_up = (frac % 2) == 1  # exactly half: to even
    if i != b:
        return 0, TS_SLOW  # exponent or other form: exact decimal arithmetic in Python
    ms = whole * 1000 + frac + (1 if round_up else 0)
    return (-ms if neg else ms), status


@_jit
def scan_chunk(buf, om):
    """Scan whole lines. Returns per-line kind and start, and per sample line its spans.

    Arrays are sized by line count; sample fields are filled for SAMPLE lines only. A MALFORMED
    line stops the scan (its index is `n_lines` - 1 in the returned count).
    """
    n = len(buf)
    n_lines = 0
    for i in range(n):
        if buf[i] == 10:
            n_lines += 1
    if n > 0 and buf[n - 1] != 10:
        n_lines += 1
    kind = np.empty(n_lines, np.int8)
    l0 = np.empty(n_lines, np.int64)
    l1 = np.empty(n_lines, np.int64)
    s1 = np.empty(n_lines, np.int64)
    v0 = np.empty(n_lines, np.int64)
    v1 = np.empty(n_lines, np.int64)
    t0 = np.empty(n_lines, np.int64)
    t1 = np.empty(n_lines, np.int64)
    ts = np.zeros(n_lines, np.int64)
    tstat = np.zeros(n_lines, np.int8)
    h = np.zeros(n_lines, np.uint64)
    fresh = np.zeros(n_lines, np.bool_)
    prev_s0 = -1
    prev_s1 = -1
    prev_h = np.uint64(0)
    pos = 0
    line = 0
    while pos < n:
        end = pos
        while end < n and buf[end] != 10:
            end += 1
        nxt = end + 1
        if end > pos and buf[end - 1] == 13:
            end -= 1
        l0[line] = pos
        l1[line] = end
        i = pos
        while i < end and _is_space(buf[i]):
            i += 1
        if i == end:
            kind[line] = BLANK
        elif buf[pos] == 35:  # '#'
            kind[line] = COMMENT
        else:
            kind[line] = MALFORMED
            i = pos
            ok = True
            if not _name_start(buf[i]):
                ok = False
            else:
                while i < end and _name_char(buf[i]):
                    i += 1
                if i < end and buf[i] == 123:  # '{'
                    inq = False
                    closed = False
                    i += 1
                    while i < end:
                        c = buf[i]
                        if inq:
                            if c == 92:  # backslash
                                i += 1
                            elif c == 34:
                                inq = False
                        elif c == 34:
                            inq = True
                        elif c == 125:  # '}'
                            closed = True
                            i += 1
                            break
                        i += 1
                    ok = closed
            if ok:
                se = i
                if i >= end or not _is_space(buf[i]):
                    ok = False
                else:
                    while i < end and _is_space(buf[i]):
                        i += 1
                    va = i
                    while i < end and not _is_space(buf[i]):
                        i += 1
                    vb = i
                    if vb == va:
                        ok = False
                    else:
                        while i < end and _is_space(buf[i]):
                            i += 1
                        ta = i
                        tb = i
                        if i < end and not (om and buf[i] == 35):
                            while i < end and not _is_space(buf[i]):
                                i += 1
                            tb = i
                            while i < end and _is_space(buf[i]):
                                i += 1
                        # anything left must be an OpenMetrics exemplar (' # {...} v [ts]')
                        if i < end and not (om and buf[i] == 35):
                            ok = False
                        if ok:
                            kind[line] = SAMPLE
                            s1[line] = se
                            v0[line] = va
                            v1[line] = vb
                            t0[line] = ta
                            t1[line] = tb
                            if tb == ta:
                                tstat[line] = TS_MISSING
                            else:
                                ms, st = _parse_ts(buf, ta, tb, om)
                                ts[line] = ms
                                tstat[line] = st
                            same = prev_s0 >= 0 and se - pos == prev_s1 - prev_s0
                            if same:
                                for k in range(se - pos):
                                    if buf[pos + k] != buf[prev_s0 + k]:
                                        same = False
                                        break
                            if same:  # most exports keep a series' samples together
                                h[line] = prev_h
                                fresh[line] = False
                            else:
                                x = np.uint64(14695981039346656037)
                                for k in range(pos, se):
                                    x = (x ^ np.uint64(buf[k])) * np.uint64(1099511628211)
                                h[line] = x
                                fresh[line] = True
                                prev_s0 = pos
                                prev_s1 = se
                                prev_h = x
            if not ok:
                line += 1
                return line, kind, l0, l1, s1, v0, v1, t0, t1, ts, tstat, h, fresh
        line += 1
        pos = nxt
    return line, kind, l0, l1, s1, v0, v1, t0, t1, ts, tstat, h, fresh


@_jit
def gather_spans(buf, a, b):
    """Copy the byte spans buf[a[i]:b[i]] end to end; returns (data, int32 offsets)."""
    n = len(a)
    offsets = np.empty(n + 1, np.int32)
    total = 0
    offsets[0] = 0
    for i in range(n):
        total += b[i] - a[i]
        offsets[i + 1] = total
    out = np.empty(total, np.uint8)
    p = 0
    for i in range(n):
        for k in range(a[i], b[i]):
            out[p] = buf[k]
            p += 1
    return out, offsets


@_jit
def spans_equal_to_first(buf, a, b, first, inverse, check):
    """True if every checked span equals the span of its group's first member (hash collisions).

    Rows not in `check` were already found byte-equal to the row before them."""
    for i in range(len(a)):
        if not check[i]:
            continue
        r = first[inverse[i]]
        if r == i:
            continue
        la = b[i] - a[i]
        if la != b[r] - a[r]:
            return False
        for k in range(la):
            if buf[a[i] + k] != buf[a[r] + k]:
                return False
    return True
