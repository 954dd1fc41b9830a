"""The local reference key: a client's case file number lies in NATS only sealed.

The adapter's bucket is on the hub's NATS unless the agency runs a leaf node, so the reference
is sealed there (AES-GCM, bound to the consent id) and indexed by an HMAC that, unlike a plain
hash, cannot be recomputed from a list of likely case numbers without the agency's key.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from bridge.adapters.localref import LocalRefKey
from bridge.errors import ConfigError

REF = "AZ 4711/26-Müller"
CONSENT = "c-0123456789abcdef0123456789abcdef"


def test_a_key_is_created_once_private_and_read_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "local-ref.key"
    first = LocalRefKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    again = LocalRefKey.load_or_create(path)  # another instance with the same file
    assert again.index(REF) == first.index(REF)
    assert again.open(CONSENT, first.seal(CONSENT, REF)) == REF
    assert "secret" in repr(first)
    assert path.read_bytes().hex() not in repr(first)


def test_a_key_file_others_may_read_or_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "local-ref.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o640)
    with pytest.raises(ConfigError) as shared:
        LocalRefKey.load_or_create(path)
    assert shared.value.reason == "config.local_ref_key"
    path.chmod(0o600)
    path.write_bytes(os.urandom(16))
    with pytest.raises(ConfigError) as short:
        LocalRefKey.load_or_create(path)
    assert short.value.reason == "config.local_ref_key"


def test_the_sealed_reference_opens_only_with_its_key_and_consent() -> None:
    key, other = LocalRefKey(os.urandom(32)), LocalRefKey(os.urandom(32))
    sealed = key.seal(CONSENT, REF)
    assert REF.encode() not in sealed.encode()
    assert key.seal(CONSENT, REF) != sealed  # a fresh nonce each time
    assert key.open(CONSENT, sealed) == REF
    assert other.open(CONSENT, sealed) is None
    assert key.open("c-" + "f" * 32, sealed) is None  # moved to another consent's record
    assert key.open(CONSENT, "not base64!") is None


def test_the_index_is_keyed_not_a_plain_hash() -> None:
    key, other = LocalRefKey(os.urandom(32)), LocalRefKey(os.urandom(32))
    assert key.index(REF) == key.index(REF)
    assert key.index(REF) != other.index(REF)
    assert key.index(REF) != hashlib.sha256(REF.encode()).hexdigest()


def test_instances_starting_together_end_up_with_one_key(tmp_path: Path) -> None:
    """Adapters that find no key at the same moment each try to write one; all but the first
    are refused by the file system and must read the first one's key, not fail."""
    path = tmp_path / "local-ref.key"
    start = threading.Barrier(8)

    def load() -> str:
        start.wait()
        return LocalRefKey.load_or_create(path).index(REF)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        indexes = list(pool.map(lambda _: load(), range(8)))
    assert len(set(indexes)) == 1
    assert LocalRefKey(path.read_bytes()).index(REF) == indexes[0]
