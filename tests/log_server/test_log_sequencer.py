"""The sequencer's group commit, on real stores (SQLite and PostgreSQL): what queues while the writer waits for the
write lock joins its next commit; every request is answered with its own index or refusal."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emshield.tlog import entry as E
from emshield.tlog.merkle import leaf_hash
from log_server import keys
from log_server.admission import RegisteredIssuers, prepare_issuance, prepare_registration
from log_server.cli import main as log_cli
from log_server.errors import Refusal
from log_server.sequencer import IssuanceFields, PreparedEntry, Sequencer
from log_server.storage import LogStore, open_store

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"emshield-sequencer-test").digest())
PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _issuance(n: int, key: Ed25519PrivateKey = KEY) -> bytes:
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    entry = E.Issuance(uuid.UUID(int=n).bytes, bytes(32), hashlib.sha256(n.to_bytes(8, "big")).digest(), None,
                       "watermark", 1_700_000_000 + n, E.issuer_key_id(pub))
    return E.sign_entry(entry, key).encode()


@pytest.fixture
def log(tmp_path: Path, store_location):
    key_file = tmp_path / "signer-key"
    result = CliRunner().invoke(log_cli, ["init", "--store", str(store_location), "--origin", "seq.test/log",
                                          "--key-file", str(key_file)],
                                env={"EMSHIELD_LOG_OPERATOR_TOKEN": "sequencer-test-token-0123456789abcdef"})
    assert result.exit_code == 0, result.output
    store = open_store(store_location)
    seq = Sequencer(store, keys.read_signer_key(key_file), "seq.test/log")
    reg = E.sign_entry(E.IssuerRegistration(PUB, "Seq Test", bytes.fromhex("a1617601"), 1), KEY).encode()
    seq.submit([prepare_registration(reg)])
    yield store, seq
    seq.stop()
    store.close()


def _latest_checkpoint_size(store: LogStore) -> int:
    with store.write() as tx:
        cp = tx.latest_checkpoint()
    return cp.size


def test_requests_queued_during_another_commit_join_the_next_commit(log) -> None:
    store, seq = log
    issuers = RegisteredIssuers(store)
    prepared = [prepare_issuance(_issuance(n), issuers) for n in range(6)]
    answers: dict[int, int] = {}

    def submit(i: int) -> None:
        (done,) = seq.submit([prepared[i]])
        answers[i] = done.index

    with store.write():  # another writer holds the lock (as another worker's commit would)
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while seq._queue.qsize() != 5 and time.monotonic() < deadline:  # the writer took one and waits
            time.sleep(0.01)
        assert seq._queue.qsize() == 5
    for t in threads:
        t.join(timeout=60)
    assert sorted(answers.values()) == list(range(1, 7))
    with store.write() as tx:
        assert tx.tree_size() == 7
        sizes = [row[0] for row in tx._c.execute("SELECT size FROM checkpoints ORDER BY size")]
    assert sizes == [0, 1, 7]  # one commit (one signed checkpoint) for all six requests


def test_a_refused_request_does_not_take_the_others_down(log) -> None:
    store, seq = log
    issuers = RegisteredIssuers(store)
    stranger = Ed25519PrivateKey.from_private_bytes(bytes(32))
    good = prepare_issuance(_issuance(1), issuers)
    bad = prepare_issuance(_issuance(2), issuers)
    # an issuance of an unregistered issuer (the route refuses it first; the commit checks again)
    data = _issuance(3, stranger)
    kid = E.issuer_key_id(stranger.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    unknown = PreparedEntry(data, leaf_hash(data), "issuance", issuance=IssuanceFields.of(kid, "u", None, None))
    outcomes = seq.integrate([[good], [unknown], [bad]])
    assert [o[0].index for o in (outcomes[0], outcomes[2])] == [1, 2]
    assert isinstance(outcomes[1], Refusal) and outcomes[1].code == "unknown_issuer"
    assert _latest_checkpoint_size(store) == 3


def test_request_threads_compute_the_index_keys_the_store_defines() -> None:
    """admission.issuance_fields (device key from the UUID's bytes) gives exactly IssuanceFields.of (from
    its text: storage.device_key), for UUIDs with the high bit set or not and both policies."""
    import random

    from log_server.admission import issuance_fields

    rnd = random.Random(5)
    for n in range(200):
        device = uuid.UUID(int=rnd.getrandbits(128)).bytes
        wm = rnd.randbytes(32) if n % 3 else None
        fp = rnd.randbytes(32) if n % 3 != 1 else None
        policy = {(True, False): "watermark", (False, True): "fingerprint", (True, True): "both"}
        entry = E.Issuance(device, bytes(32), wm, fp, policy[(wm is not None, fp is not None)], 1_700_000_000,
                           E.issuer_key_id(PUB))
        fields = issuance_fields(entry)
        assert fields == IssuanceFields.of(entry.issuer_key_id, str(uuid.UUID(bytes=device)), wm, fp)
        assert fields.device_key == int.from_bytes(device[:8], "big", signed=True)


def test_an_attribution_whose_signer_was_revoked_after_admission_is_refused_at_commit(log) -> None:
    """Attributions get the issuance's commit-time issuer check: admitted by the request thread,
    then the signer revoked, the commit refuses it (403) and stores nothing of it."""
    from _kit.attributions import attribution, secret_issuance
    from log_server.admission import prepare_entry

    store, seq = log
    issuers = RegisteredIssuers(store)
    first = secret_issuance(KEY, 1)
    (done,) = seq.submit([prepare_entry(first.leaf, issuers)])
    prepared = prepare_entry(attribution(KEY, done.index, first.leaf_hash, first.key), issuers)
    assert prepared.kind == "attribution" and prepared.attribution.issuance_index == done.index
    with store.write() as tx:
        tx.revoke_issuer(E.issuer_key_id(PUB), time.time(), "test")
    (outcome,) = seq.integrate([[prepared]])
    assert isinstance(outcome, Refusal) and outcome.code == "revoked_issuer"
    assert _latest_checkpoint_size(store) == 2 and store.attributions("issuance_index", done.index, 10) == []
