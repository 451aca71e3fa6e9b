"""FITS ``CHECKSUM``/``DATASUM`` arithmetic (FITS 4.0 appendix J), streaming.

astropy computes these only over whole in-memory HDUs; the preprocessing streams
gigabytes, so it needs the running form: a 32-bit ones'-complement sum that can be
fed chunk by chunk, and the 16-character ASCII encoding of the ``CHECKSUM`` value.
A whole HDU (header + data + padding) whose ``CHECKSUM`` is right sums to -0
(``0xFFFFFFFF``); ``DATASUM`` is the decimal sum of the data part alone.
"""

from __future__ import annotations

import numpy as np

ALL_ONES = 0xFFFFFFFF
_EXCLUDE = frozenset(b":;<=>?@[\\]^_`")


def fold(total: int) -> int:
    """Fold carries above bit 32 back in (end-around carry)."""
    while total >> 32:
        total = (total & ALL_ONES) + (total >> 32)
    return total


def add(a: int, b: int) -> int:
    """Ones'-complement sum of two 32-bit sums."""
    return fold(a + b)


def sum32(buffer, start: int = 0) -> int:
    """Ones'-complement sum of big-endian 32-bit words of ``buffer``, continued from ``start``.

    ``buffer`` is anything exposing the buffer protocol whose length is a multiple of 4
    (FITS blocks are 2880 bytes, so HDU parts always are).
    """
    view = np.frombuffer(buffer, dtype=">u4")
    # a uint64 accumulator cannot overflow below 2**32 words (16 GiB per call)
    return add(start, int(view.sum(dtype=np.uint64)))


def encode(value: int) -> str:
    """The 16-character ASCII encoding of a 32-bit value (the complement of a checksum)."""
    asc = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        quotient, remainder = byte // 4 + ord("0"), byte % 4
        ch = [quotient + remainder, quotient, quotient, quotient]
        changed = True
        while changed:
            changed = False
            for j in (0, 2):
                while ch[j] in _EXCLUDE or ch[j + 1] in _EXCLUDE:
                    ch[j] += 1
                    ch[j + 1] -= 1
                    changed = True
        for j in range(4):
            asc[4 * j + i] = ch[j]
    return bytes(asc[(i + 15) % 16] for i in range(16)).decode("ascii")


def checksum_value(header_sum_with_zero_checksum: int, datasum: int) -> str:
    """``CHECKSUM`` card value, given the sum of the header bytes written with
    ``CHECKSUM='0000000000000000'`` and the data sum."""
    return encode(~add(header_sum_with_zero_checksum, datasum) & ALL_ONES)
