"""Admission checks for entries and side records, run in the request thread before sequencing.

An entry is admitted only if `emshield.tlog.entry.decode_entry` accepts its exact bytes (strict,
canonical, bounded) and its Ed25519 signature verifies: for an issuance with the registered,
non-revoked issuer's key; for a registration with the key it registers (proof of possession;
the operator credential is checked by the route). The admitted bytes are the leaf, unchanged.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from emshield.tlog.entry import EntryError, Issuance, IssuerRegistration, SignedEntry, decode_entry, verify_entry_signature
from emshield.tlog.merkle import leaf_hash

from .sequencer import IssuanceFields, PreparedEntry, RegistrationFields
from .storage import IssuerRecord, LogStore


class EntryRejected(Exception):
    """Why an entry or side record is refused: an HTTP status, an error code and a sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _decode(body: bytes) -> SignedEntry:
    try:
        return decode_entry(body)
    except EntryError as exc:
        raise EntryRejected(400, "malformed_entry", str(exc)) from exc


def _verify(signed: SignedEntry, public_key: Ed25519PublicKey, verified: set | None = None) -> None:
    try:
        verify_entry_signature(signed, public_key, verified)
    except EntryError as exc:
        raise EntryRejected(400, "bad_signature", str(exc)) from exc


class IssuerKeys:
    """Registered issuers and their parsed verification keys, cached per process.

    A registration never changes once logged, so a cached record can only be stale about
    revocation, and the sequencer re-checks revocation inside the commit transaction: a cached
    entry cannot let a revoked issuer's entry in (it is refused with 403 at commit instead).
    Unknown issuers are not cached, so a new registration is seen at once.
    """

    MAX_CACHED = 10_000

    def __init__(self, store: LogStore) -> None:
        self._store = store
        self._cache: dict[bytes, tuple[IssuerRecord, Ed25519PublicKey]] = {}

    def get(self, key_id: bytes) -> tuple[IssuerRecord, Ed25519PublicKey] | None:
        hit = self._cache.get(key_id)
        if hit is not None:
            return hit
        record = self._store.issuer(key_id)
        if record is None:
            return None
        hit = (record, Ed25519PublicKey.from_public_bytes(record.public_key))
        if record.revoked_at is None:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[key_id] = hit
        return hit


def prepare_issuance(body: bytes, issuers: IssuerKeys, verified: set | None = None) -> PreparedEntry:
    """Check an issuance entry against the registered issuers. ``verified``: batch signatures
    already verified for this request (see `verify_entry_signature`), so the entries of one
    signing batch cost one Ed25519 verification in all."""
    signed = _decode(body)
    entry = signed.entry
    if not isinstance(entry, Issuance):
        raise EntryRejected(400, "wrong_entry_type",
                            f"{entry.TYPE} entries are not appended here (issuer registrations: POST /v1/issuers)")
    found = issuers.get(entry.issuer_key_id)
    if found is None:
        raise EntryRejected(403, "unknown_issuer", f"issuer {entry.issuer_key_id.hex()} is not registered")
    issuer, public_key = found
    if issuer.revoked_at is not None:
        raise EntryRejected(403, "revoked_issuer", f"issuer {issuer.key_id.hex()} was revoked")
    _verify(signed, public_key, verified)
    fields = IssuanceFields(entry.issuer_key_id, entry.device_uuid_text, entry.watermark_commitment,
                            entry.fingerprint_hash)
    return PreparedEntry(body, leaf_hash(body), entry.TYPE, issuance=fields)


def prepare_registration(body: bytes) -> PreparedEntry:
    """Check a self-signed issuer registration entry."""
    signed = _decode(body)
    entry = signed.entry
    if not isinstance(entry, IssuerRegistration):
        raise EntryRejected(400, "wrong_entry_type", f"expected an issuer-registration entry, got {entry.TYPE}")
    _verify(signed, Ed25519PublicKey.from_public_bytes(entry.issuer_public_key))
    fields = RegistrationFields(entry.key_id, entry.issuer_public_key, entry.name, entry.registered_at)
    return PreparedEntry(body, leaf_hash(body), entry.TYPE, registration=fields)


def check_side_record(leaf: bytes, record: bytes) -> None:
    """A side record is the full fingerprint the leaf's fingerprint_hash commits to (spec/fingerprint.md):
    canonical CBOR whose SHA-256 under the fingerprint label equals that hash."""
    from emshield.marking.fingerprint import Fingerprint, FingerprintError

    entry = _decode(leaf).entry
    if not isinstance(entry, Issuance) or entry.fingerprint_hash is None:
        raise EntryRejected(400, "no_fingerprint_hash", "this entry commits to no fingerprint, so it has no side record")
    try:
        Fingerprint.from_cbor(record, expected_hash=entry.fingerprint_hash)
    except FingerprintError as exc:
        raise EntryRejected(400, "side_record_mismatch", str(exc)) from exc
