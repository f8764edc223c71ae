"""Admission checks for entries and side records, run in the request thread before sequencing.

An entry is admitted only if `emshield.tlog.entry.decode_entry` accepts its exact bytes (strict,
canonical, bounded) and its Ed25519 signature verifies: for an issuance or an attribution with
the registered, non-revoked issuer's key; for a registration with the key it registers (proof of
possession; the operator credential is checked by the route). An attribution must also open the
issuance it names (`_check_attribution`). The admitted bytes are the leaf, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from emshield.tlog.entry import (
    Attribution,
    EntryError,
    EntryPositionError,
    Issuance,
    IssuerRegistration,
    SignedEntry,
    decode_entry,
    verify_entry_signature,
    verify_entry_signatures,
)
from emshield.tlog.merkle import leaf_hash

from .errors import Refusal
from .sequencer import AttributionFields, IssuanceFields, PreparedEntry, RegistrationFields
from .storage import IssuerRecord, LogStore, blob_key


def _decode(body: bytes) -> SignedEntry:
    try:
        return decode_entry(body)
    except EntryError as exc:
        raise Refusal(400, "malformed_entry", str(exc)) from exc


def _verify(signed: SignedEntry, public_key: Ed25519PublicKey) -> None:
    try:
        verify_entry_signature(signed, public_key)
    except EntryError as exc:
        raise Refusal(400, "bad_signature", str(exc)) from exc


class RegisteredIssuers:
    """Registered issuers and their parsed verification keys, cached per process.

    A registration never changes once logged, so a cached record can only be stale about
    revocation, and the sequencer re-checks revocation inside the commit transaction: a cached
    entry cannot let a revoked issuer's entry in (it is refused with 403 at commit instead).
    Unknown issuers are not cached, so a new registration is seen at once.
    """

    MAX_CACHED = 10_000

    def __init__(self, store: LogStore) -> None:
        self.store = store  # also where attributions find the issuance they open
        self._cache: dict[bytes, tuple[IssuerRecord, Ed25519PublicKey]] = {}

    def get(self, key_id: bytes) -> tuple[IssuerRecord, Ed25519PublicKey] | None:
        hit = self._cache.get(key_id)
        if hit is not None:
            return hit
        record = self.store.issuer(key_id)
        if record is None:
            return None
        hit = (record, Ed25519PublicKey.from_public_bytes(record.public_key))
        if record.revoked_at is None:
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[key_id] = hit
        return hit


def prepare_issuances(bodies: Sequence[bytes], issuers: RegisteredIssuers) -> list[PreparedEntry]:
    """Check one request's issuance entries against the registered issuers, all or none.

    Raises Refusal for the first entry in order that fails any check (its ``position``), as
    checking them one by one would. Each entry is decoded and its issuer checked in turn; then the
    signatures of all entries before the first failure are verified together
    (`verify_entry_signatures`: a complete signing batch costs one tree build and one Ed25519
    verification instead of an inclusion proof per entry). Attributions are refused here (the
    batch route): they are appended one at a time (`prepare_entry`)."""
    return _prepare(bodies, issuers, False)


def _prepare(bodies: Sequence[bytes], issuers: RegisteredIssuers, attributions: bool) -> list[PreparedEntry]:
    """`prepare_issuances`, admitting attributions too if ``attributions``."""
    decoded: list[tuple[SignedEntry, Ed25519PublicKey]] = []
    admitted: list[bytes] = []  # `bodies` may copy each item out of a request body when asked (batch.BatchItems)
    refusal: Refusal | None = None
    for position, body in enumerate(bodies):
        try:
            decoded.append(_issuance(body, issuers, attributions))
        except Refusal as rej:
            rej.position, refusal = position, rej
            break
        admitted.append(body)
    try:
        verify_entry_signatures([signed for signed, _ in decoded], [key for _, key in decoded])
    except EntryPositionError as exc:
        raise Refusal(400, "bad_signature", exc.reason, exc.position) from exc
    if refusal is not None:
        try:
            raise refusal
        finally:  # the traceback holds this frame: without this the two would keep each other alive,
            del refusal  # and the request's body with them, until the collector next runs
    if attributions:
        return [_prepared_attribution(body, signed.entry, issuers.store) if type(signed.entry) is Attribution
                else PreparedEntry(body, leaf_hash(body), Issuance.TYPE, issuance=issuance_fields(signed.entry))
                for body, (signed, _) in zip(admitted, decoded)]
    return [PreparedEntry(body, leaf_hash(body), Issuance.TYPE, issuance=issuance_fields(signed.entry))
            for body, (signed, _) in zip(admitted, decoded)]


def issuance_fields(entry: Issuance) -> IssuanceFields:
    """`IssuanceFields.of` the entry's values, its device key taken from the UUID's bytes: the key
    is their first 8 bytes (`storage.device_key` reads the same 8 bytes from the text), which
    saves parsing the text back on the hottest path of the batch append."""
    wm, fp = entry.watermark_commitment, entry.fingerprint_hash
    return IssuanceFields(entry.issuer_key_id, entry.device_uuid_text, wm, fp, blob_key(wm), blob_key(fp),
                          blob_key(entry.device_uuid))


def prepare_issuance(body: bytes, issuers: RegisteredIssuers) -> PreparedEntry:
    """`prepare_issuances` for a single entry."""
    return prepare_issuances([body], issuers)[0]


def prepare_entry(body: bytes, issuers: RegisteredIssuers) -> PreparedEntry:
    """The single-entry append (POST /v1/entries): one issuance, checked as `prepare_issuance`
    checks it, or one attribution."""
    return _prepare([body], issuers, True)[0]


def _issuance(body: bytes, issuers: RegisteredIssuers,
              attributions: bool = False) -> tuple[SignedEntry, Ed25519PublicKey]:
    """A decoded issuance (or attribution, if admitted) and its registered, non-revoked issuer's
    key (the signature is not checked)."""
    signed = _decode(body)
    entry = signed.entry
    if not isinstance(entry, Issuance) and not (attributions and isinstance(entry, Attribution)):
        where = ("appended one at a time: POST /v1/entries" if isinstance(entry, Attribution)
                 else "not appended here (issuer registrations: POST /v1/issuers)")
        raise Refusal(400, "wrong_entry_type", f"{entry.TYPE} entries are {where}")
    found = issuers.get(entry.issuer_key_id)
    if found is None:
        raise Refusal(403, "unknown_issuer", f"issuer {entry.issuer_key_id.hex()} is not registered")
    issuer, public_key = found
    if issuer.revoked_at is not None:
        raise Refusal(403, "revoked_issuer", f"issuer {issuer.key_id.hex()} was revoked")
    return signed, public_key


def _prepared_attribution(body: bytes, entry: Attribution, store: LogStore) -> PreparedEntry:
    """A signed attribution, once `_check_attribution` found that it opens its issuance."""
    _check_attribution(entry, store)
    return PreparedEntry(body, leaf_hash(body), Attribution.TYPE, attribution=AttributionFields(
        entry.issuer_key_id, entry.issuance_index, entry.suspect_sha256))


def _check_attribution(entry: Attribution, store: LogStore) -> None:
    """Refuse an attribution unless leaf ``issuance_index`` is logged, is an issuance whose leaf
    hash is ``issuance_leaf_hash`` and which carries the secret-mark fields, and the disclosed nonce
    and key open its ``secret_mark_commitment`` (spec/watermark.md, "Secret tier").

    Leaves never change once stored, so what is read here still holds at commit. The signer may be
    any registered issuer (a rotated key of the issuance's issuer): the evidence is the opening,
    and verifiers report who signed."""
    from emshield.marking.secret import commitment  # numpy: loaded only where attributions are appended

    index, size = entry.issuance_index, store.tree_size()
    leaf = store.leaf(index) if index < size else None  # compared first: index + 1 may overflow SQL integers
    if leaf is None:
        raise Refusal(400, "issuance_not_logged", f"no entry at index {index}: the log holds {size} entries")
    try:
        issuance = decode_entry(leaf.data).entry
    except EntryError:  # a leaf of a type this server does not know (a later version's)
        issuance = None
    if not isinstance(issuance, Issuance):
        kind = issuance.TYPE if issuance is not None else "entry of a type this log does not know"
        raise Refusal(400, "not_an_issuance", f"the entry at index {index} is not an issuance: it is an {kind}")
    if leaf.leaf_hash != entry.issuance_leaf_hash:
        raise Refusal(400, "issuance_leaf_mismatch",
                      f"the issuance at index {index} has leaf hash {leaf.leaf_hash.hex()}, the attribution names"
                      f" {entry.issuance_leaf_hash.hex()}")
    if issuance.secret_mark_commitment is None:
        raise Refusal(400, "no_secret_mark",
                      f"the issuance at index {index} carries no secret mark (no secret_mark_commitment) to open")
    if commitment(entry.detection_nonce, entry.detection_key) != issuance.secret_mark_commitment:
        raise Refusal(400, "commitment_mismatch",
                      f"the disclosed detection key and nonce do not open the secret-mark commitment of the"
                      f" issuance at index {index}")


def prepare_registration(body: bytes) -> PreparedEntry:
    """Check a self-signed issuer registration entry."""
    signed = _decode(body)
    entry = signed.entry
    if not isinstance(entry, IssuerRegistration):
        raise Refusal(400, "wrong_entry_type", f"expected an issuer-registration entry, got {entry.TYPE}")
    _verify(signed, Ed25519PublicKey.from_public_bytes(entry.issuer_public_key))
    fields = RegistrationFields(entry.key_id, entry.issuer_public_key, entry.name, entry.registered_at)
    return PreparedEntry(body, leaf_hash(body), entry.TYPE, registration=fields)


def check_side_record(leaf: bytes, record: bytes) -> None:
    """A side record is the full fingerprint the leaf's fingerprint_hash commits to (spec/fingerprint.md):
    canonical CBOR whose SHA-256 under the fingerprint label equals that hash."""
    from emshield.marking.fingerprint import Fingerprint, FingerprintError

    entry = _decode(leaf).entry
    if not isinstance(entry, Issuance) or entry.fingerprint_hash is None:
        raise Refusal(400, "no_fingerprint_hash", "this entry commits to no fingerprint, so it has no side record")
    try:
        Fingerprint.from_cbor(record, expected_hash=entry.fingerprint_hash)
    except FingerprintError as exc:
        raise Refusal(400, "side_record_mismatch", str(exc)) from exc
