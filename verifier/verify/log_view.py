"""A view of the transparency log in which every answer used has been checked.

The verifier pins the log's verifier key. Everything it takes from the log goes through here and
is checked against the one checkpoint fetched at the start (spec/verify.md, "What is checked"):
the checkpoint's signature; registration entries (decoded, self-signature, inclusion at the listed
index, agreement with the issuer list); issuance entries from the indexes (leaf hash, decoding,
agreement with the query and the index fields, issuer signature, inclusion at the claimed index);
side records (against the entry's fingerprint hash); and, for a full scan, every leaf (the root
recomputed from all of them must be the checkpoint's root, so nothing can be left out).

Any disagreement raises LogMisbehaving: a log that answers inconsistently is reported, never
worked around. An unreachable log (or a 5xx) raises LogUnavailable.

A static mirror (the log's C2SP tiles served as plain files, `emshield-log serve --tiles-dir`) has
no /v1 API: no index, no issuer list, no side records. `open_verified_log` notices (GET
/v1/issuers is a plain 404 there) and returns a `StaticVerifiedLog`, which reads everything from
the tiles: one full replay (every entry bundle, its root recomputed and compared with the
checkpoint's) yields the registered issuers and an index of the issuances, so every answer is
proved by the replay itself. What a static mirror cannot say (revocations, which are log-server
state, and published fingerprints) is reported as unknown or unpublished, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tqdm import tqdm

from emshield.logclient.http import (
    AttributionHit,
    InclusionProof,
    IssuanceHit,
    IssuerInfo,
    LogClient,
    LogClientError,
)
from emshield.logclient.tiles import TileClient, TileFetchError, tile_node_reader
from emshield.marking import fingerprint as fpmod
from emshield.marking.params import MarkingParams, ParamsError
from emshield.tlog import merkle
from emshield.tlog.checkpoint import Checkpoint, CheckpointError, CosignatureVerifier, NoteVerifier, verify_checkpoint
from emshield.tlog.tiles import TILE_WIDTH, bundles_for
from emshield.tlog.entry import (
    Attribution,
    EntryError,
    Issuance,
    IssuerRegistration,
    SignedEntry,
    decode_entry,
    issuer_key_id,
    verify_entry_signature,
)
from verifier.errors import LogMisbehaving, LogUnavailable, NotALog
from verifier.witness_policy import WitnessPolicyError, verify_witnessed

T = TypeVar("T")
E = TypeVar("E", Issuance, Attribution)
H = TypeVar("H", IssuanceHit, AttributionHit)


@dataclass(frozen=True)
class ProvedIssuer:
    """A registered issuer whose registration entry was decoded, signature-checked and proved."""

    key_id: bytes
    public_key: bytes
    name: str
    index: int  # leaf index of the registration entry
    registered_at: int
    revoked: bool | None  # log-server state, not a logged fact (spec/api.md §2.6); None: unknown (offline)
    params: MarkingParams | None
    params_error: str | None  # why the published marking parameters are unusable, if they are

    def verifying_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)


@dataclass(frozen=True)
class ProvedIssuance:
    """An issuance entry whose signature verified and whose inclusion in the checkpoint is proved."""

    index: int
    leaf_hash: bytes
    entry: Issuance
    issuer: ProvedIssuer
    proof: str  # how inclusion was proved


@dataclass(frozen=True)
class ProvedAttribution:
    """An attribution entry (a disclosed detection key) whose signer is a proved registered issuer,
    whose signature verified and whose inclusion in the checkpoint is proved."""

    index: int
    leaf_hash: bytes
    entry: Attribution
    signer: ProvedIssuer
    proof: str


@dataclass(frozen=True)
class ScanResult:
    """A full replay: the candidates it found (already proved by the replay itself)."""

    leaves: int
    issuances: list[ProvedIssuance]


@contextmanager
def _answers(what: str) -> Iterator[None]:
    """Sort the client's failures into unavailable (retry later) or misbehaving."""
    try:
        yield
    except LogClientError as exc:
        if exc.retryable:
            raise LogUnavailable(f"{what}: {exc}") from exc
        raise LogMisbehaving(f"{what}: the log answered {exc}") from exc
    except merkle.ProofError as exc:
        raise LogMisbehaving(f"{what}: proof does not verify: {exc}") from exc
    except TileFetchError as exc:  # a missing or malformed tile: nothing is proved either way
        raise LogUnavailable(f"{what}: {exc}") from exc


def _call(what: str, fn: Callable[..., T], *args: object, **kw: object) -> T:
    with _answers(what):
        return fn(*args, **kw)


@dataclass(frozen=True)
class WitnessPolicy:
    """Require ``quorum`` of ``witnesses`` to have cosigned the checkpoint (spec/witness.md)."""

    witnesses: tuple[CosignatureVerifier, ...]
    quorum: int


class VerifiedLog:
    """One log, pinned by its verifier key, read at one verified checkpoint.

    With a witness policy the checkpoint must also carry ``quorum`` valid cosignatures of the listed
    witnesses, so that the log cannot show this verifier a tree it did not show the witnesses.
    """

    mode = "api"  # how the log is read (`verdict.log["mode"]`)

    def __init__(self, client: LogClient, verifier: NoteVerifier, *, witnesses: WitnessPolicy | None = None,
                 progress: bool = False) -> None:
        self.client = client
        self.progress = progress
        self.cosigned_by: tuple[str, ...] = ()
        try:
            note = client.checkpoint_note()
        except LogClientError as exc:
            if exc.status == 404:  # nothing at <url>/checkpoint: not a log (a wrong URL), nothing concluded
                raise NotALog(f"no EMShield log answers at {client.url} (GET /checkpoint: 404); check --log") from exc
            with _answers("checkpoint"):
                raise
        try:
            if witnesses is None:
                self.checkpoint: Checkpoint = verify_checkpoint(note, verifier)
            else:
                seen = verify_witnessed(note, verifier, witnesses.witnesses, witnesses.quorum)
                self.checkpoint, self.cosigned_by = seen.checkpoint, seen.cosigned_by
        except CheckpointError as exc:
            raise LogMisbehaving(f"the log's checkpoint does not verify with the pinned key: {exc}") from exc
        except WitnessPolicyError as exc:
            raise LogMisbehaving(f"the log's checkpoint fails the witness policy: {exc}") from exc
        self._issuers: dict[bytes, ProvedIssuer] | None = None
        self._listed: list[IssuerInfo] | None = None
        self.note = note  # the signed checkpoint note as served (the forensic report quotes it)
        self.inclusion: dict[int, InclusionProof] = {}  # every inclusion proof checked, by leaf index

    def serves_api(self) -> bool:
        """Whether the log answers its /v1 API (False: a plain 404, as a static tile mirror gives)."""
        with _answers("issuer list"):
            try:
                self._listed = self.client.issuers()
            except LogClientError as exc:
                if exc.status == 404 and exc.code == "http_error":  # not an API error body: no API here
                    return False
                raise
        return True

    # -- inclusion ------------------------------------------------------------------------------

    def _prove(self, leaf: bytes, index: int, what: str) -> InclusionProof:
        """Inclusion of ``leaf`` at ``index`` in the verified checkpoint's tree."""
        if index >= self.checkpoint.size:
            raise LogMisbehaving(f"{what}: index {index} is beyond the checkpoint (size {self.checkpoint.size})")
        proof = _call(f"{what}: inclusion proof", self.client.prove_inclusion, leaf, self.checkpoint)
        if proof.index != index:
            raise LogMisbehaving(f"{what}: the log says index {index} but proves the leaf at {proof.index}")
        self.inclusion[index] = proof
        return proof

    def audit_path(self, index: int, leaf_hash: bytes | None = None) -> InclusionProof:
        """The inclusion proof of the leaf at ``index``: the one checked earlier, or (for a leaf
        proved by the full replay) fetched now and checked against the same checkpoint."""
        if index not in self.inclusion:
            what = f"leaf {index}: inclusion proof"
            if leaf_hash is None:
                leaf_hash = merkle.leaf_hash(self._leaf(index, what))
            proof = _call(what, self.client.inclusion_proof_by_hash, leaf_hash, self.checkpoint.size)
            if (proof.index, proof.leaf_hash) != (index, leaf_hash):
                raise LogMisbehaving(f"{what}: the log proves leaf {proof.index}, not {index}")
            _call(what, merkle.verify_inclusion, leaf_hash, index, self.checkpoint.size, list(proof.hashes),
                  self.checkpoint.root_hash)
            self.inclusion[index] = proof
        return self.inclusion[index]

    def _leaf(self, index: int, what: str) -> bytes:
        page = _call(what, self.client.entries, index, index + 1)
        return page[0].data

    # -- issuers --------------------------------------------------------------------------------

    def issuers(self) -> dict[bytes, ProvedIssuer]:
        """Registered issuers by key id, each registration proved; those registered after the
        verified checkpoint are left out (they cannot be proved against it)."""
        if self._issuers is not None:
            return self._issuers
        listed = self._listed if self._listed is not None else _call("issuer list", self.client.issuers)
        out: dict[bytes, ProvedIssuer] = {}
        for info in tqdm(listed, desc="issuers", unit="issuer", disable=not self.progress, leave=False):
            if info.index >= self.checkpoint.size:
                continue
            if info.key_id in out:
                raise LogMisbehaving(f"issuer {info.key_id.hex()} is listed twice")
            out[info.key_id] = self._issuer(info)
        self._issuers = out
        return out

    def _issuer(self, info: IssuerInfo) -> ProvedIssuer:
        what = f"registration of issuer {info.name!r} (leaf {info.index})"
        try:
            if issuer_key_id(info.public_key) != info.key_id:
                raise LogMisbehaving(f"{what}: key id does not belong to the listed public key")
        except EntryError as exc:
            raise LogMisbehaving(f"{what}: {exc}") from exc
        leaf = self._leaf(info.index, what)
        signed = self._decode(leaf, what)
        reg = signed.entry
        if not isinstance(reg, IssuerRegistration):
            raise LogMisbehaving(f"{what}: the leaf is not an issuer registration")
        if (reg.issuer_public_key, reg.name, reg.registered_at) != (info.public_key, info.name, info.registered_at):
            raise LogMisbehaving(f"{what}: the issuer list disagrees with the registration entry")
        self._check_signature(signed, Ed25519PublicKey.from_public_bytes(reg.issuer_public_key), what)
        self._prove(leaf, info.index, what)
        try:
            params, error = MarkingParams.from_cbor(reg.marking_params), None
        except ParamsError as exc:
            params, error = None, f"marking parameters unusable: {exc}"
        return ProvedIssuer(info.key_id, info.public_key, info.name, info.index, info.registered_at, info.revoked,
                      params, error)

    @staticmethod
    def _decode(leaf: bytes, what: str) -> SignedEntry:
        try:
            return decode_entry(leaf)
        except EntryError as exc:
            raise LogMisbehaving(f"{what}: the log holds a leaf that is not a valid entry: {exc}") from exc

    @staticmethod
    def _check_signature(signed: SignedEntry, key: Ed25519PublicKey, what: str) -> None:
        try:
            verify_entry_signature(signed, key)
        except EntryError as exc:
            raise LogMisbehaving(f"{what}: {exc} (the log must refuse such entries)") from exc

    def _signed_as(self, signed: SignedEntry, kind: type[E], what: str) -> tuple[E, ProvedIssuer]:
        """The entry, which must be of ``kind``, and the registered issuer whose key signed it."""
        entry = signed.entry
        if not isinstance(entry, kind):
            raise LogMisbehaving(f"{what}: not an {kind.TYPE} entry")
        issuer = self.issuers().get(entry.issuer_key_id)
        if issuer is None:
            raise LogMisbehaving(f"{what}: signed by {entry.issuer_key_id.hex()}, which is not a registered issuer")
        self._check_signature(signed, issuer.verifying_key(), what)
        return entry, issuer

    def _signed_issuance(self, signed: SignedEntry, what: str) -> tuple[Issuance, ProvedIssuer]:
        return self._signed_as(signed, Issuance, what)

    # -- issuance look-ups ----------------------------------------------------------------------

    def _index_hits(self, hits: list[H], what: str) -> Iterator[tuple[H, str]]:
        """An index answer's hits inside the verified checkpoint, each hashing to its leaf hash (with
        ``what`` naming it, ``{}`` = its index); hits beyond the checkpoint (appended since) are skipped."""
        for hit in hits:
            if hit.index >= self.checkpoint.size:
                continue
            name = what.format(hit.index)
            if merkle.leaf_hash(hit.leaf) != hit.leaf_hash:
                raise LogMisbehaving(f"{name}: the leaf hash does not match the leaf")
            yield hit, name

    def issuances(self, *, watermark_commitment: bytes | None = None,
                  fingerprint_hash: bytes | None = None) -> tuple[list[ProvedIssuance], bool]:
        """Issuances the log's index returns for one field, each checked and proved, and whether
        the log said there are more than it returned (the caller must then not treat the hits as all).

        Hits beyond the verified checkpoint (appended since) are left out.
        """
        field, value = (("watermark_commitment", watermark_commitment) if watermark_commitment is not None
                        else ("fingerprint_hash", fingerprint_hash))
        lookup = _call(f"issuances by {field}", self.client.issuance_lookup, **{field: value})
        out = []
        for hit, what in self._index_hits(lookup.hits, f"issuance at leaf {{}} (by {field})"):
            signed = self._decode(hit.leaf, what)
            entry, issuer = self._signed_issuance(signed, what)
            if getattr(entry, field) != value:
                raise LogMisbehaving(f"{what}: the entry's {field} is not the one asked for")
            if (entry.issuer_key_id, entry.device_uuid_text) != (hit.issuer_key_id, hit.device_uuid):
                raise LogMisbehaving(f"{what}: the index fields disagree with the entry")
            self._prove(hit.leaf, hit.index, what)
            out.append(ProvedIssuance(hit.index, hit.leaf_hash, entry, issuer,
                                      f"inclusion proof at leaf {hit.index} verified against the checkpoint"))
        return out, lookup.truncated

    def side_fingerprint(self, issuance: ProvedIssuance) -> fpmod.Fingerprint | None:
        """The published fingerprint of an issuance, checked against its logged hash (None if unpublished)."""
        expected = issuance.entry.fingerprint_hash
        if expected is None:
            return None
        what = f"side record of leaf {issuance.index}"
        data = _call(what, self.client.side_record, issuance.index)
        if data is None:
            return None
        try:
            return fpmod.Fingerprint.from_cbor(data, expected)
        except fpmod.FingerprintError as exc:
            raise LogMisbehaving(f"{what}: {exc}") from exc

    # -- disclosed attributions -------------------------------------------------------------------

    def _proved_attribution(self, index: int, data: bytes, what: str, proof: str) -> ProvedAttribution:
        entry, signer = self._signed_as(self._decode(data, what), Attribution, what)
        return ProvedAttribution(index, merkle.leaf_hash(data), entry, signer, proof)

    def attributions(self, suspect_sha256: bytes) -> tuple[list[ProvedAttribution], bool]:
        """Attribution entries the log's index returns for a suspect digest, each checked and proved,
        and whether the log said there are more than it returned. Hits beyond the checkpoint are left out."""
        lookup = _call("attributions by suspect digest", self.client.attribution_lookup, suspect_sha256=suspect_sha256)
        out = []
        for hit, what in self._index_hits(lookup.hits, "attribution at leaf {}"):
            proved = self._proved_attribution(hit.index, hit.leaf, what,
                                              f"inclusion proof at leaf {hit.index} verified against the checkpoint")
            if proved.entry.suspect_sha256 != suspect_sha256:
                raise LogMisbehaving(f"{what}: the entry's suspect digest is not the one asked for")
            if proved.entry.issuance_index != hit.issuance_index or proved.entry.issuer_key_id != hit.issuer_key_id:
                raise LogMisbehaving(f"{what}: the index fields disagree with the entry")
            self._prove(hit.leaf, hit.index, what)
            out.append(proved)
        return out, lookup.truncated

    def issuance_at(self, index: int, leaf_hash: bytes, what: str) -> ProvedIssuance:
        """The issuance entry at ``index``, which must hash to ``leaf_hash``: signature-checked and proved."""
        if index >= self.checkpoint.size:
            raise LogMisbehaving(f"{what}: index {index} is beyond the checkpoint (size {self.checkpoint.size})")
        data = self._leaf(index, what)
        if merkle.leaf_hash(data) != leaf_hash:
            raise LogMisbehaving(f"{what}: the leaf at {index} does not hash to the attributed leaf hash")
        entry, issuer = self._signed_issuance(self._decode(data, what), what)
        self._prove(data, index, what)
        return ProvedIssuance(index, leaf_hash, entry, issuer, f"inclusion proof at leaf {index} verified against the checkpoint")

    # -- full replay ----------------------------------------------------------------------------

    def scan(self, keep: Callable[[Issuance], bool]) -> ScanResult:
        """Read every leaf of the checkpoint's tree, recompute its root, and return the issuances
        ``keep`` selects, signature-checked. The root check proves every returned issuance is at
        its index, and that the log left nothing out; every registration in the tree must also be
        in the issuer list (at its first registration's index), or the list hid an issuer."""
        size = self.checkpoint.size
        tree = merkle.CompactRange()
        kept: list[tuple[int, bytes, SignedEntry]] = []
        registrations: dict[bytes, int] = {}
        with tqdm(total=size, desc="replaying log", unit="leaf", disable=not self.progress, leave=False) as bar:
            with _answers("replaying the log"):  # streamed page by page: memory stays O(log n + kept)
                for index, data in self._leaves():
                    lh = merkle.leaf_hash(data)
                    tree.append(lh)
                    signed = self._decode(data, f"leaf {index}")
                    if isinstance(signed.entry, Issuance) and keep(signed.entry):
                        kept.append((index, lh, signed))
                    elif isinstance(signed.entry, IssuerRegistration):
                        registrations.setdefault(signed.entry.key_id, index)
                    bar.update(1)
        if tree.root() != self.checkpoint.root_hash:
            raise LogMisbehaving(f"the {size} leaves the log serves do not hash to its checkpoint's root")
        listed = {key: issuer.index for key, issuer in self.issuers().items()}
        for key, index in registrations.items():
            if listed.get(key) != index:
                raise LogMisbehaving(f"the issuer list omits or misplaces the registration at leaf {index} "
                                     f"(key id {key.hex()[:16]}…), which the full replay shows")
        out = []
        for index, lh, signed in kept:
            entry, issuer = self._signed_issuance(signed, f"issuance at leaf {index}")
            out.append(ProvedIssuance(index, lh, entry, issuer,
                                      f"full replay of {size} leaves matches the checkpoint root"))
        return ScanResult(size, out)

    def _leaves(self) -> Iterator[tuple[int, bytes]]:
        """Every leaf of the checkpoint's tree in order, as (index, exact leaf bytes)."""
        for leaf in self.client.iter_entries(0, self.checkpoint.size):
            yield leaf.index, leaf.data


class StaticVerifiedLog(VerifiedLog):
    """The log read from a static tile mirror: everything through the tiles, look-ups by replay.

    The first look-up replays the whole tree once from the entry bundles (the root recomputed
    from every leaf must be the checkpoint's, so nothing was left out or changed) and keeps the
    registered issuers, every leaf hash, and, per watermark commitment and fingerprint hash (and per
    suspect digest for attributions), the indices of the entries that carry it. A hit's entry is
    fetched again from its bundle and must hash to the leaf hash the replay saw there."""

    mode = "static tiles"

    def __init__(self, client: LogClient, verifier: NoteVerifier, *, witnesses: WitnessPolicy | None = None,
                 progress: bool = False) -> None:
        super().__init__(client, verifier, witnesses=witnesses, progress=progress)
        self.tiles = TileClient(client.url, timeout=client.timeout)
        self._hits: dict[tuple[str, bytes], list[int]] | None = None
        self._all_hashes = bytearray()  # every leaf hash the replay saw, 32 bytes per index

    def _leaves(self) -> Iterator[tuple[int, bytes]]:
        bundles = bundles_for(0, self.checkpoint.size)
        for bundle, entries in self.tiles.fetch_many(bundles):
            yield from enumerate(entries, start=bundle.index * TILE_WIDTH)

    def _index(self) -> dict[tuple[str, bytes], list[int]]:
        if self._hits is not None:
            return self._hits
        hits: dict[tuple[str, bytes], list[int]] = {}
        registrations: dict[bytes, tuple[int, SignedEntry]] = {}
        tree = merkle.CompactRange()
        size = self.checkpoint.size
        self._all_hashes = bytearray()
        with tqdm(total=size, desc="replaying tiles", unit="leaf", disable=not self.progress, leave=False) as bar:
            with _answers("replaying the log's tiles"):
                for index, data in self._leaves():
                    lh = merkle.leaf_hash(data)
                    tree.append(lh)
                    signed = self._decode(data, f"leaf {index}")
                    entry = signed.entry
                    if isinstance(entry, Issuance):
                        for field in ("watermark_commitment", "fingerprint_hash"):
                            value = getattr(entry, field)
                            if value is not None:
                                hits.setdefault((field, value), []).append(index)
                    elif isinstance(entry, Attribution):
                        hits.setdefault(("suspect_sha256", entry.suspect_sha256), []).append(index)
                    elif isinstance(entry, IssuerRegistration) and entry.key_id not in registrations:
                        registrations[entry.key_id] = (index, signed)
                    self._all_hashes += lh
                    bar.update(1)
        if tree.root() != self.checkpoint.root_hash:
            raise LogMisbehaving(f"the {size} leaves the tiles hold do not hash to the checkpoint's root")
        issuers: dict[bytes, ProvedIssuer] = {}
        for key_id, (index, signed) in registrations.items():
            reg = signed.entry
            what = f"registration at leaf {index}"
            self._check_signature(signed, Ed25519PublicKey.from_public_bytes(reg.issuer_public_key), what)
            try:
                params, error = MarkingParams.from_cbor(reg.marking_params), None
            except ParamsError as exc:
                params, error = None, f"marking parameters unusable: {exc}"
            issuers[key_id] = ProvedIssuer(key_id, reg.issuer_public_key, reg.name, index, reg.registered_at, None,
                                           params, error)
        self._issuers, self._hits = issuers, hits
        return hits

    def serves_api(self) -> bool:
        return False

    def issuers(self) -> dict[bytes, ProvedIssuer]:
        """Every issuer registered in the tree (revocation unknown: it is log-server state)."""
        self._index()
        assert self._issuers is not None
        return self._issuers

    def issuances(self, *, watermark_commitment: bytes | None = None,
                  fingerprint_hash: bytes | None = None) -> tuple[list[ProvedIssuance], bool]:
        field, value = (("watermark_commitment", watermark_commitment) if watermark_commitment is not None
                        else ("fingerprint_hash", fingerprint_hash))
        out = []
        for index in self._index().get((field, value), []):
            what = f"issuance at leaf {index} (by {field}, from the tiles)"
            data = self._leaf(index, what)
            lh = merkle.leaf_hash(data)
            entry, issuer = self._signed_issuance(self._decode(data, what), what)
            out.append(ProvedIssuance(index, lh, entry, issuer,
                                      f"full replay of {self.checkpoint.size} leaves from the tiles matches the"
                                      " checkpoint root"))
        return out, False

    def _leaf(self, index: int, what: str) -> bytes:
        """The leaf from its entry bundle; it must hash to what the replay saw at that index."""
        self._index()
        with _answers(what):
            ((bundle, entries),) = self.tiles.fetch_many(bundles_for(index, index + 1)[-1:])
        data = entries[index - bundle.index * TILE_WIDTH]
        if merkle.leaf_hash(data) != bytes(self._all_hashes[32 * index:32 * index + 32]):
            raise LogMisbehaving(f"{what}: the mirror served other bytes than during the replay")
        return data

    def _prove(self, leaf: bytes, index: int, what: str) -> InclusionProof:
        return self.audit_path(index, merkle.leaf_hash(leaf))

    def attributions(self, suspect_sha256: bytes) -> tuple[list[ProvedAttribution], bool]:
        out = []
        for index in self._index().get(("suspect_sha256", suspect_sha256), []):
            what = f"attribution at leaf {index} (from the tiles)"
            out.append(self._proved_attribution(index, self._leaf(index, what), what,
                                                f"full replay of {self.checkpoint.size} leaves from the tiles "
                                                "matches the checkpoint root"))
        return out, False

    def side_fingerprint(self, issuance: ProvedIssuance) -> fpmod.Fingerprint | None:
        return None  # a static mirror publishes no side records

    def audit_path(self, index: int, leaf_hash: bytes | None = None) -> InclusionProof:
        """Computed from the mirror's hash tiles (a static mirror has no proof endpoint; its leaf
        hash, when not given, is the tiles' own) and checked against the checkpoint root."""
        if index not in self.inclusion:
            size, what = self.checkpoint.size, f"leaf {index}: inclusion proof from the tiles"
            get_nodes = tile_node_reader(self.tiles, size)
            with _answers(what):
                if leaf_hash is None:
                    leaf_hash = get_nodes([(0, index)]).get((0, index))
                    if leaf_hash is None:
                        raise TileFetchError(f"the tiles hold no hash for leaf {index}")
                hashes = merkle.inclusion_proof(index, size, get_nodes)
                merkle.verify_inclusion(leaf_hash, index, size, hashes, self.checkpoint.root_hash)
            self.inclusion[index] = InclusionProof(index, size, leaf_hash, tuple(hashes))
        return self.inclusion[index]


def open_verified_log(client: LogClient, verifier: NoteVerifier, *, witnesses: WitnessPolicy | None = None,
                      progress: bool = False) -> VerifiedLog:
    """The log at ``client``'s URL through its API, or through its tiles alone where it is a static
    mirror without one."""
    log = VerifiedLog(client, verifier, witnesses=witnesses, progress=progress)
    if log.serves_api():
        return log
    return StaticVerifiedLog(client, verifier, witnesses=witnesses, progress=progress)
