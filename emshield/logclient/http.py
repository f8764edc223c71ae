"""HTTP client for the EMShield log API (spec/api.md), used by the issuer, device, verifier and auditor.

The plain methods only fetch and parse (typed results; a malformed answer is an error, never a
guess). The `verified_*` / `prove_*` helpers additionally check what they fetched with
`merkle` and `checkpoint`, so a caller that uses them trusts nothing the server says unchecked.
Depends on requests and the pure log core only: no server code.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
import requests

from emshield.tlog import merkle
from emshield.tlog.checkpoint import Checkpoint, NoteVerifier, verify_checkpoint

CBOR = "application/cbor"
DEFAULT_TIMEOUT_S = 30.0
# Largest answer read: a page of 1,000 leaves of up to 64 KiB each is ~88 MB of JSON (base64).
# Anything larger is refused while reading, so a hostile log cannot exhaust the client's memory.
MAX_RESPONSE_BYTES = 128 << 20


class LogClientError(RuntimeError):
    """The log refused a request, answered something malformed, or could not be reached.

    ``status`` is the HTTP status (0 when there was no HTTP answer), ``code`` the API's error code
    (spec/api.md, "Errors"), or "bad_response" / "unreachable" / "timeout" for client-side failures.
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code} ({status}): {detail}" if status else f"{code}: {detail}")
        self.status, self.code, self.detail = status, code, detail

    @property
    def retryable(self) -> bool:
        """The log could not be reached, timed out, was overloaded or failed: nothing was concluded about
        it, and retrying later is safe (exit code 4, spec/cli.md)."""
        return self.code in ("unreachable", "timeout") or self.status >= 500 or self.status == 429


@dataclass(frozen=True)
class AppendResult:
    index: int
    leaf_hash: bytes
    created: bool  # False: the identical entry was already in the log at `index`


@dataclass(frozen=True)
class LeafEntry:
    index: int
    data: bytes  # the exact leaf bytes (an encoded entry)


@dataclass(frozen=True)
class InclusionProof:
    index: int
    tree_size: int
    leaf_hash: bytes
    hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class ConsistencyProof:
    first: int
    second: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class IssuanceHit:
    index: int
    leaf_hash: bytes
    leaf: bytes
    issuer_key_id: bytes
    device_uuid: str
    has_side_record: bool


@dataclass(frozen=True)
class IssuanceLookup:
    hits: list[IssuanceHit]
    truncated: bool  # the server had more hits than it returned (spec/api.md §2.5)


@dataclass(frozen=True)
class AttributionHit:
    """An attribution entry the log indexed (spec/api.md, GET /v1/attributions): its leaf, not
    yet checked (decode it, verify its signature and inclusion before relying on it)."""

    index: int
    leaf_hash: bytes
    leaf: bytes
    issuer_key_id: bytes
    issuance_index: int


@dataclass(frozen=True)
class AttributionLookup:
    hits: list[AttributionHit]
    truncated: bool  # the server had more hits than it returned


@dataclass(frozen=True)
class IssuerInfo:
    key_id: bytes
    public_key: bytes
    name: str
    index: int
    registered_at: int
    revoked: bool
    revoked_at: float | None
    revocation_reason: str | None


def _bad(detail: str) -> LogClientError:
    return LogClientError(0, "bad_response", detail)


def _get(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _bad(f"answer lacks {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def _int(obj: Any, key: str) -> int:
    value = _get(obj, key, int)
    if isinstance(value, bool) or value < 0:
        raise _bad(f"{key!r} must be a non-negative integer")
    return value


def _b64(obj: Any, key: str, size: int | None = None) -> bytes:
    try:
        value = base64.b64decode(_get(obj, key, str), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"{key!r} is not base64") from exc
    if size is not None and len(value) != size:
        raise _bad(f"{key!r} must be {size} bytes, got {len(value)}")
    return value


def _hexfield(obj: Any, key: str) -> bytes:
    try:
        return bytes.fromhex(_get(obj, key, str))
    except ValueError as exc:
        raise _bad(f"{key!r} is not hex") from exc


def _hashes(obj: Any) -> tuple[bytes, ...]:
    items = _get(obj, "hashes", list)
    return tuple(_b64({"h": h}, "h", merkle.HASH_SIZE) for h in items)


def _append_result(obj: Any) -> AppendResult:
    return AppendResult(_int(obj, "index"), _b64(obj, "leaf_hash", merkle.HASH_SIZE), _get(obj, "created", bool))


def _issuer(obj: Any) -> IssuerInfo:
    revoked_at = obj.get("revoked_at") if isinstance(obj, dict) else None
    reason = obj.get("revocation_reason") if isinstance(obj, dict) else None
    if revoked_at is not None and not isinstance(revoked_at, (int, float)):
        raise _bad("'revoked_at' has the wrong type")
    if reason is not None and not isinstance(reason, str):
        raise _bad("'revocation_reason' has the wrong type")
    return IssuerInfo(_hexfield(obj, "key_id"), _b64(obj, "public_key"), _get(obj, "name", str), _int(obj, "index"),
                      _int(obj, "registered_at"), _get(obj, "revoked", bool), revoked_at, reason)


class LogClient:
    """One log at ``url`` (e.g. ``http://127.0.0.1:8080``); thread safe if ``session`` is not shared."""

    def __init__(self, url: str, *, operator_token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 session: requests.Session | None = None, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.url = url.rstrip("/")
        self.operator_token = operator_token
        self.timeout = timeout
        self.session = session or requests.Session()
        self.max_response_bytes = max_response_bytes

    # -- transport ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None, data: bytes | None = None,
                 content_type: str | None = None, operator: bool = False, json_body: Any = None) -> requests.Response:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if operator:
            if not self.operator_token:
                raise LogClientError(0, "missing_credential", "this call needs the operator token")
            headers["Authorization"] = f"Bearer {self.operator_token}"
        try:
            resp = self.session.request(method, self.url + path, params=params, data=data, json=json_body,
                                        headers=headers, timeout=self.timeout, stream=True)
            with resp:
                resp._content = self._bounded_body(resp, f"{method} {path}")  # what .content/.json() read
        except requests.RequestException as exc:
            raise LogClientError(0, "unreachable", f"{method} {self.url}{path}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
                code, detail = str(body["error"]), str(body["detail"])
            except (ValueError, KeyError, TypeError):
                code, detail = "http_error", resp.text[:300]
            raise LogClientError(resp.status_code, code, detail)
        return resp

    def _bounded_body(self, resp: requests.Response, what: str) -> bytes:
        """The whole answer body, refused as soon as it passes ``max_response_bytes``, or when it
        is still arriving ``timeout`` seconds after the request began (requests' own timeout is per
        read, so a log dribbling bytes could otherwise hold the client forever)."""
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_response_bytes:
            raise _bad(f"{what}: answer of {declared} bytes is over the {self.max_response_bytes}-byte limit")
        deadline = time.monotonic() + self.timeout
        body = bytearray()
        while chunk := resp.raw.read1(1 << 16, decode_content=True):  # whatever has arrived, at most 64 KiB
            body += chunk
            if len(body) > self.max_response_bytes:
                raise _bad(f"{what}: answer is over the {self.max_response_bytes}-byte limit")
            if time.monotonic() > deadline:
                raise LogClientError(0, "timeout", f"{what}: answer still arriving after {self.timeout} s")
        return bytes(body)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._request(method, path, **kw)
        try:
            return resp.json()
        except ValueError as exc:
            raise _bad(f"{method} {path}: answer is not JSON") from exc

    # -- reads ----------------------------------------------------------------------------------

    def checkpoint_note(self) -> bytes:
        """The latest signed checkpoint note, unverified (see `verified_checkpoint`)."""
        return self._request("GET", "/checkpoint").content

    def entries(self, start: int, end: int) -> list[LeafEntry]:
        """One page of leaves from [start, end); the server may return fewer (page limit)."""
        body = self._json("GET", "/v1/entries", params={"start": start, "end": end})
        out = [LeafEntry(_int(e, "index"), _b64(e, "leaf")) for e in _get(body, "entries", list)]
        if [e.index for e in out] != list(range(start, start + len(out))) or not out:
            raise _bad("entries are not the requested contiguous range")
        return out

    def iter_entries(self, start: int, end: int) -> Iterator[LeafEntry]:
        """Every leaf in [start, end), page by page."""
        while start < end:
            page = self.entries(start, end)
            yield from page
            start += len(page)

    def inclusion_proof(self, index: int, tree_size: int) -> InclusionProof:
        return self._inclusion({"index": index, "tree_size": tree_size})

    def inclusion_proof_by_hash(self, leaf_hash: bytes, tree_size: int) -> InclusionProof:
        return self._inclusion({"leaf_hash": leaf_hash.hex(), "tree_size": tree_size})

    def _inclusion(self, params: dict[str, Any]) -> InclusionProof:
        body = self._json("GET", "/v1/proof/inclusion", params=params)
        proof = InclusionProof(_int(body, "index"), _int(body, "tree_size"), _b64(body, "leaf_hash", merkle.HASH_SIZE),
                               _hashes(body))
        if proof.tree_size != params["tree_size"] or ("index" in params and proof.index != params["index"]):
            raise _bad("inclusion proof is for another index or tree size")
        return proof

    def consistency_proof(self, first: int, second: int) -> ConsistencyProof:
        body = self._json("GET", "/v1/proof/consistency", params={"first": first, "second": second})
        proof = ConsistencyProof(_int(body, "first"), _int(body, "second"), _hashes(body))
        if (proof.first, proof.second) != (first, second):
            raise _bad("consistency proof is for other sizes")
        return proof

    def issuances(self, *, watermark_commitment: bytes | None = None, fingerprint_hash: bytes | None = None,
                  device_uuid: str | None = None) -> list[IssuanceHit]:
        """Issuance entries by exactly one indexed field (the server caps the number returned)."""
        return self.issuance_lookup(watermark_commitment=watermark_commitment, fingerprint_hash=fingerprint_hash,
                                    device_uuid=device_uuid).hits

    def issuance_lookup(self, *, watermark_commitment: bytes | None = None, fingerprint_hash: bytes | None = None,
                        device_uuid: str | None = None) -> IssuanceLookup:
        """Like :meth:`issuances`, with the server's ``truncated`` flag (more hits than it returns)."""
        given = {k: v for k, v in (("watermark_commitment", watermark_commitment),
                                   ("fingerprint_hash", fingerprint_hash), ("device_uuid", device_uuid)) if v is not None}
        if len(given) != 1:
            raise ValueError("give exactly one of watermark_commitment, fingerprint_hash, device_uuid")
        params = {k: (v.hex() if isinstance(v, bytes) else str(v)) for k, v in given.items()}
        body = self._json("GET", "/v1/issuances", params=params)
        hits = [IssuanceHit(_int(h, "index"), _b64(h, "leaf_hash", merkle.HASH_SIZE), _b64(h, "leaf"),
                            _hexfield(h, "issuer_key_id"), _get(h, "device_uuid", str), _get(h, "has_side_record", bool))
                for h in _get(body, "issuances", list)]
        return IssuanceLookup(hits, _get(body, "truncated", bool))

    def attributions(self, *, suspect_sha256: bytes | None = None,
                     issuance_index: int | None = None) -> list[AttributionHit]:
        """Attribution entries by exactly one of the suspect file's SHA-256 and the attributed
        issuance's leaf index (the server caps the number returned)."""
        return self.attribution_lookup(suspect_sha256=suspect_sha256, issuance_index=issuance_index).hits

    def attribution_lookup(self, *, suspect_sha256: bytes | None = None,
                           issuance_index: int | None = None) -> AttributionLookup:
        """Like :meth:`attributions`, with the server's ``truncated`` flag (more hits than it returns)."""
        if (suspect_sha256 is None) == (issuance_index is None):
            raise ValueError("give exactly one of suspect_sha256, issuance_index")
        params = ({"suspect_sha256": bytes(suspect_sha256).hex()} if suspect_sha256 is not None
                  else {"issuance_index": str(int(issuance_index))})  # type: ignore[arg-type]
        body = self._json("GET", "/v1/attributions", params=params)
        hits = [AttributionHit(_int(h, "index"), _b64(h, "leaf_hash", merkle.HASH_SIZE), _b64(h, "leaf"),
                               _hexfield(h, "issuer_key_id"), _int(h, "issuance_index"))
                for h in _get(body, "attributions", list)]
        return AttributionLookup(hits, _get(body, "truncated", bool))

    def issuers(self) -> list[IssuerInfo]:
        return [_issuer(i) for i in _get(self._json("GET", "/v1/issuers"), "issuers", list)]

    def side_record(self, index: int) -> bytes | None:
        """The side record published beside entry ``index``, or None if there is none."""
        try:
            return self._request("GET", f"/v1/entries/{int(index)}/side-record").content
        except LogClientError as exc:
            if exc.status == 404 and exc.code == "no_side_record":
                return None
            raise

    # -- writes ---------------------------------------------------------------------------------

    def append(self, entry: bytes) -> AppendResult:
        """Append one encoded issuance or attribution entry; returns once it is durable (and in a checkpoint)."""
        return _append_result(self._json("POST", "/v1/entries", data=entry, content_type=CBOR))

    def append_batch(self, entries: Sequence[bytes]) -> list[AppendResult]:
        """Append many entries in one request (all or none), results in the same order."""
        body = cbor2.dumps([bytes(e) for e in entries], canonical=True)
        results = [_append_result(r) for r in _get(self._json("POST", "/v1/entries/batch", data=body,
                                                             content_type=CBOR), "results", list)]
        if len(results) != len(entries):
            raise _bad(f"batch answer has {len(results)} results for {len(entries)} entries")
        return results

    def register_issuer(self, entry: bytes) -> AppendResult:
        """Log a self-signed issuer registration entry (needs the operator token)."""
        return _append_result(self._json("POST", "/v1/issuers", data=entry, content_type=CBOR, operator=True))

    def revoke_issuer(self, key_id: bytes, reason: str = "") -> IssuerInfo:
        """Refuse further entries from this issuer (needs the operator token)."""
        return _issuer(self._json("POST", f"/v1/issuers/{key_id.hex()}/revoke", json_body={"reason": reason},
                                  operator=True))

    def put_side_record(self, index: int, data: bytes) -> bool:
        """Publish the side record of entry ``index``; True if stored now, False if already there."""
        body = self._json("PUT", f"/v1/entries/{int(index)}/side-record", data=data,
                          content_type="application/octet-stream")
        return _get(body, "stored", bool)

    # -- verified helpers -----------------------------------------------------------------------

    def verified_checkpoint(self, verifier: NoteVerifier, origin: str | None = None) -> Checkpoint:
        """The latest checkpoint, its signature checked with ``verifier`` (raises CheckpointError)."""
        return verify_checkpoint(self.checkpoint_note(), verifier, origin)

    def prove_inclusion(self, entry: bytes, checkpoint: Checkpoint) -> InclusionProof:
        """Fetch and check the proof that ``entry`` (exact leaf bytes) is in ``checkpoint``'s tree.

        Raises merkle.ProofError if the server's proof does not lead to the checkpoint's root.
        """
        lh = merkle.leaf_hash(entry)
        proof = self.inclusion_proof_by_hash(lh, checkpoint.size)
        if proof.leaf_hash != lh:
            raise merkle.ProofError("server proved a different leaf")
        merkle.verify_inclusion(lh, proof.index, checkpoint.size, list(proof.hashes), checkpoint.root_hash)
        return proof

    def prove_consistency(self, old: Checkpoint, new: Checkpoint) -> ConsistencyProof:
        """Fetch and check that ``new`` extends ``old`` (raises merkle.ProofError otherwise)."""
        if old.size == 0:
            if old.root_hash != merkle.EMPTY_ROOT:
                raise merkle.ProofError("a size-0 checkpoint must have the empty root")
            return ConsistencyProof(0, new.size, ())
        proof = self.consistency_proof(old.size, new.size)
        merkle.verify_consistency(old.size, new.size, list(proof.hashes), old.root_hash, new.root_hash)
        return proof
