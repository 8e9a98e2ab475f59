"""cache.hmac_sha256 is HMAC-SHA256: what the standard library's hmac computes (it is written out to keep
OpenSSL, which hashlib and hmac load at import, out of a cached run)."""

from __future__ import annotations

import hashlib
import hmac
import marshal
import os
import subprocess
import sys

import pytest

from kptrace import cache


@pytest.mark.parametrize("key_len", [0, 1, 31, 32, 63, 64, 65, 200])
@pytest.mark.parametrize("msg_len", [0, 1, 55, 64, 1000, 200_000])
def test_hmac_sha256_is_the_standard_one(key_len: int, msg_len: int) -> None:
    key, msg = os.urandom(key_len), os.urandom(msg_len)
    want = hmac.digest(key, msg, "sha256")
    assert cache.hmac_sha256(key, msg) == want
    cut = msg_len // 3
    assert cache.hmac_sha256(key, msg[:cut], msg[cut:]) == want  # parts: their concatenation
    assert cache.hmac_sha256(key, msg[:cut], b"", msg[cut:]) == want


def test_entry_mac_is_the_hmac_of_head_and_payload() -> None:
    key = os.urandom(32)
    sealed = cache._seal(key, "scan-x", marshal.dumps({"a": [1, 2]}))
    head, mac, payload = sealed.split(b"\n", 2)
    assert mac == hmac.new(key, head + b"\n" + payload, hashlib.sha256).hexdigest().encode()
    assert cache._unseal(key, "scan-x", sealed) == {"a": [1, 2]}
    assert cache._unseal(os.urandom(32), "scan-x", sealed) is None  # another key
    assert cache._unseal(key, "scan-y", sealed) is None  # another name
    forged = head + b"\n" + hmac.new(key[::-1], head + b"\n" + payload, hashlib.sha256).hexdigest().encode()
    assert cache._unseal(key, "scan-x", forged + b"\n" + payload) is None


def test_small_sha256_is_sha256() -> None:
    for data in (b"", b"abc", os.urandom(100_000)):
        assert cache._sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_cached_run_loads_no_openssl() -> None:
    """Importing the cache and sealing, unsealing entries import neither hashlib nor hmac."""
    code = ("import sys, marshal; from kptrace import cache; k = b'k' * 32; s = cache._seal(k, 'n', marshal.dumps([1]));"
            "assert cache._unseal(k, 'n', s) == [1];"
            "print(sorted(m for m in ('hashlib', 'hmac', '_hashlib', 'secrets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
