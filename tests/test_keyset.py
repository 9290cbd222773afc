"""KeySet: the compact set of binary keys the expansion walks use to tell repeats from new requests."""

from __future__ import annotations

import hashlib
import random

import pytest

from pixbatch.keyset import KeySet


def test_it_tells_every_repeat_from_every_new_key_like_a_set():
    rng = random.Random(7)
    pool = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(20_000)]
    walk = [rng.choice(pool) for _ in range(60_000)]  # plenty of repeats
    ks, plain = KeySet(), set()
    for key in walk:
        assert ks.add_hex(key) == (key not in plain)
        plain.add(key)
    assert len(ks) == len(plain)
    assert all(bytes.fromhex(k) in ks for k in plain)
    assert bytes.fromhex("f" * 32) not in ks


def test_a_match_across_two_records_is_not_a_hit():
    ks = KeySet(size=4)  # two bytes pick the bucket, two are stored
    assert ks.add(b"\x00\x00AB") and ks.add(b"\x00\x00CA")  # the bucket holds "ABCA"
    assert b"\x00\x00BC" not in ks  # "BC" is in the bytes, across the records' boundary
    assert ks.add(b"\x00\x00BC")
    assert not ks.add(b"\x00\x00BC") and not ks.add(b"\x00\x00CA")
    assert len(ks) == 3 and ks.nbytes() == 6


def test_a_million_keys_cost_about_twenty_bytes_each():
    ks = KeySet()
    for i in range(200_000):
        ks.add(hashlib.md5(i.to_bytes(4, "little")).digest())
    assert len(ks) == 200_000 and ks.nbytes() == 200_000 * 14  # plus ~60 bytes for each of 65,536 buckets


def test_keys_too_short_to_bucket_are_refused():
    with pytest.raises(ValueError):
        KeySet(size=2)
