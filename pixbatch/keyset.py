"""A set of fixed-size binary keys that costs ~20 bytes a key instead of a Python set's ~80.

The walks over an expansion (``run``'s ingest, ``estimate``) must tell a repeated request
from a new one, exactly, for every item: at a million items a ``set`` of 128-bit ints is
~77 MB, at ten million ~770 MB. :class:`KeySet` keeps the keys' bytes in 65,536 buckets
(by their first two bytes), each a ``bytearray`` of the remaining bytes back to back,
and looks a key up with ``bytearray.find`` (C speed; a hit must fall on a record
boundary). Keys are uniformly distributed hashes, so buckets stay even: ~15 records at a
million keys, ~150 at ten million (a 2 KB scan).

Exact for the keys it is given: a caller that stores a digest prefix (``NameCheck`` stores
8 bytes of a name's hash) gets a filter whose false positives it must tolerate.
"""

from __future__ import annotations

_BUCKETS = 1 << 16


class KeySet:
    """``add(key) -> bool``: True when ``key`` (bytes of the set's ``size``) was not in the set."""

    __slots__ = ("size", "_rest", "_buckets", "count")

    def __init__(self, size: int = 16):
        if size < 3:
            raise ValueError("keys must be at least 3 bytes")
        self.size = size
        self._rest = size - 2
        self._buckets: list[bytearray | None] = [None] * _BUCKETS
        self.count = 0

    def add(self, key: bytes) -> bool:
        i = key[0] << 8 | key[1]
        rec = key[2:]
        bucket = self._buckets[i]
        if bucket is None:
            self._buckets[i] = bytearray(rec)
            self.count += 1
            return True
        rest = self._rest
        pos = bucket.find(rec)
        while pos != -1:
            if pos % rest == 0:
                return False
            pos = bucket.find(rec, pos + 1)
        bucket += rec
        self.count += 1
        return True

    def add_hex(self, key: str) -> bool:
        """``add`` for a key written in hex (an item key: 32 hex digits, 16 bytes)."""
        return self.add(bytes.fromhex(key))

    def __contains__(self, key: bytes) -> bool:
        bucket = self._buckets[key[0] << 8 | key[1]]
        if bucket is None:
            return False
        rec, rest = key[2:], self._rest
        pos = bucket.find(rec)
        while pos != -1:
            if pos % rest == 0:
                return True
            pos = bucket.find(rec, pos + 1)
        return False

    def __len__(self) -> int:
        return self.count

    def nbytes(self) -> int:
        """Bytes held by the records (what the set costs, less ~60 bytes per bucket in use)."""
        return sum(len(b) for b in self._buckets if b is not None)
