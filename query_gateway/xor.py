"""Prometheus XOR chunk encoding (tsdb/chunkenc/xor.go, the Gorilla scheme), bit for bit.

Layout: a 2-byte big-endian sample count, then a bit stream (most significant bit first):

- sample 0: timestamp as a signed varint (zig-zag), value as 64 raw bits;
- sample 1: timestamp delta as an unsigned varint, value XOR-encoded;
- sample n: delta-of-delta of the timestamp in one of five buckets — `0` (dod == 0),
  `10`+14 bits, `110`+17 bits, `1110`+20 bits, `1111`+64 bits (two's complement in the bucket's
  width, bucket chosen when -(2^(n-1)-1) <= dod <= 2^(n-1)) — then the value XOR-encoded.
- value XOR: `0` if equal to the previous value; else `1`, then `0` + the meaningful bits when
  they fit the previous leading/trailing-zero window, or `1` + 5 bits leading zeros (capped at
  31) + 6 bits significant-bit count (64 written as 0) + the significant bits.

Prometheus cuts a chunk at 120 samples; `encode_chunks` does the same.
"""

from __future__ import annotations

import struct
from typing import Iterator, Sequence

SAMPLES_PER_CHUNK = 120
_MASK64 = (1 << 64) - 1


def _f2u(v: float) -> int:
    return struct.unpack(">Q", struct.pack(">d", v))[0]


def _u2f(u: int) -> float:
    return struct.unpack(">d", struct.pack(">Q", u))[0]


def _uvarint(x: int) -> bytes:
    out = bytearray()
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


def _varint(x: int) -> bytes:
    return _uvarint((x << 1) ^ (x >> 63) if x < 0 else x << 1)


class _Bits:
    """A most-significant-bit-first bit writer with Prometheus's bstream byte length.

    Prometheus's writeByte always appends the next byte, so a stream whose last write was
    whole bytes ending on a byte boundary carries one trailing zero byte; we do the same so
    chunks are byte-identical to Prometheus's.
    """

    __slots__ = ("buf", "acc", "n", "last_whole_bytes")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.acc = 0
        self.n = 0
        self.last_whole_bytes = False

    def write(self, value: int, nbits: int) -> None:
        self.last_whole_bytes = nbits % 8 == 0
        self.acc = (self.acc << nbits) | (value & ((1 << nbits) - 1))
        self.n += nbits
        while self.n >= 8:
            self.n -= 8
            self.buf.append((self.acc >> self.n) & 0xFF)
        self.acc &= (1 << self.n) - 1

    def write_bytes(self, data: bytes) -> None:
        for b in data:
            self.write(b, 8)

    def getvalue(self) -> bytes:
        if self.n == 0 and self.last_whole_bytes:
            return bytes(self.buf) + b"\x00"
        if self.n:
            return bytes(self.buf) + bytes([(self.acc << (8 - self.n)) & 0xFF])
        return bytes(self.buf)


def _clz64(x: int) -> int:
    return 64 - x.bit_length()


def _ctz64(x: int) -> int:
    return (x & -x).bit_length() - 1


def encode_xor(ts: Sequence[int], values: Sequence[float]) -> bytes:
    """One XOR chunk of the given samples (at most 65535; Prometheus uses 120)."""
    n = len(ts)
    if n != len(values):
        raise ValueError("ts and values differ in length")
    if n > 0xFFFF:
        raise ValueError("a chunk holds at most 65535 samples")
    bits = _Bits()
    t_prev = t_delta = 0
    v_prev = 0
    leading, trailing = 0xFF, 0
    for i in range(n):
        t = int(ts[i])
        v = _f2u(float(values[i]))
        if i == 0:
            bits.write_bytes(_varint(t))
            bits.write(v, 64)
        elif i == 1:
            t_delta = t - t_prev
            bits.write_bytes(_uvarint(t_delta))
            leading, trailing = _write_value(bits, v, v_prev, leading, trailing)
        else:
            d = t - t_prev
            dod = d - t_delta
            if dod == 0:
                bits.write(0, 1)
            elif -8191 <= dod <= 8192:
                bits.write(0b10, 2)
                bits.write(dod, 14)
            elif -65535 <= dod <= 65536:
                bits.write(0b110, 3)
                bits.write(dod, 17)
            elif -524287 <= dod <= 524288:
                bits.write(0b1110, 4)
                bits.write(dod, 20)
            else:
                bits.write(0b1111, 4)
                bits.write(dod & _MASK64, 64)
            t_delta = d
            leading, trailing = _write_value(bits, v, v_prev, leading, trailing)
        t_prev, v_prev = t, v
    return struct.pack(">H", n) + bits.getvalue()


def _write_value(bits: _Bits, v: int, v_prev: int, leading: int, trailing: int) -> tuple[int, int]:
    delta = v ^ v_prev
    if delta == 0:
        bits.write(0, 1)
        return leading, trailing
    bits.write(1, 1)
    new_lead, new_trail = _clz64(delta), _ctz64(delta)
    if new_lead >= 32:
        new_lead = 31
    if leading != 0xFF and new_lead >= leading and new_trail >= trailing:
        bits.write(0, 1)
        bits.write(delta >> trailing, 64 - leading - trailing)
        return leading, trailing
    bits.write(1, 1)
    bits.write(new_lead, 5)
    sig = 64 - new_lead - new_trail
    bits.write(sig, 6)  # 64 wraps to 0, as in Prometheus
    bits.write(delta >> new_trail, sig)
    return new_lead, new_trail


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0  # in bits

    def read(self, nbits: int) -> int:
        out = 0
        for _ in range(nbits):
            byte = self.data[self.pos >> 3]
            out = (out << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return out

    def uvarint(self) -> int:
        x = shift = 0
        while True:
            b = self.read(8)
            x |= (b & 0x7F) << shift
            if b < 0x80:
                return x
            shift += 7

    def varint(self) -> int:
        u = self.uvarint()
        return (u >> 1) ^ -(u & 1)


def _signed(x: int, nbits: int) -> int:
    # As Prometheus reads it: above 2^(n-1) is negative (so +2^(n-1) itself is representable).
    if nbits == 64:
        return x - (1 << 64) if x >= 1 << 63 else x
    return x - (1 << nbits) if x > 1 << (nbits - 1) else x


def decode_xor(data: bytes) -> list[tuple[int, float]]:
    """All samples of an XOR chunk."""
    if len(data) < 2:
        raise ValueError("XOR chunk shorter than its header")
    (n,) = struct.unpack(">H", data[:2])
    r = _Reader(data[2:])
    out: list[tuple[int, float]] = []
    t = t_delta = v = 0
    leading = trailing = 0
    for i in range(n):
        if i == 0:
            t = r.varint()
            v = r.read(64)
        else:
            if i == 1:
                t_delta = r.uvarint()
            else:
                prefix = 0
                for _ in range(4):
                    prefix = (prefix << 1) | r.read(1)
                    if not prefix & 1:
                        break
                width = {0b0: 0, 0b10: 14, 0b110: 17, 0b1110: 20, 0b1111: 64}[prefix]
                dod = _signed(r.read(width), width) if width else 0
                t_delta += dod
            t += t_delta
            if r.read(1):
                if r.read(1):
                    leading = r.read(5)
                    sig = r.read(6) or 64
                    trailing = 64 - leading - sig
                v ^= r.read(64 - leading - trailing) << trailing
        out.append((t, _u2f(v)))
    return out


def encode_chunks(ts: Sequence[int], values: Sequence[float],
                  per_chunk: int = SAMPLES_PER_CHUNK) -> Iterator[tuple[int, int, bytes]]:
    """(min_time, max_time, XOR bytes) per run of `per_chunk` samples."""
    for i in range(0, len(ts), per_chunk):
        t = ts[i:i + per_chunk]
        yield int(t[0]), int(t[-1]), encode_xor(t, values[i:i + per_chunk])


# ---- CRC-32C, pure Python: the test oracle of the serving path's google-crc32c ----------------------

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c_py(data: bytes) -> int:
    """CRC-32 Castagnoli (the checksum of remote-read stream frames), byte by byte."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
