"""The issuer's registration in the log: its public key and marking parameters, logged once
(spec/issue.md §2), read back with its self-signature checked."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from emshield.core import Core
from emshield.logclient.http import LogClient
from emshield.marking.params import LayerSpec, MarkingParams, ParamsError, verification_key
from emshield.tlog.entry import EntryError, IssuerRegistration, decode_entry, sign_entry, verify_entry_signature

from .errors import IssueError
from .keys import IssuerKeys


def marking_params_for(keys: IssuerKeys, backbone_id: str, core: Core, *, rs_nsym: int = 10,
                       tau: float = 3.0) -> MarkingParams:
    """Public marking parameters for one backbone and core layout (what `emshield mark params` makes)."""
    layers = tuple(LayerSpec(name, *core[name].shape) for name in sorted(core))
    try:
        return MarkingParams(backbone_id, verification_key(keys.marking_secret, backbone_id), layers,
                             rs_nsym=rs_nsym, tau_milli=round(tau * 1000))
    except ParamsError as exc:
        raise IssueError("marking-params", str(exc)) from exc


@dataclass(frozen=True)
class LoggedRegistration:
    index: int
    entry: bytes  # exact leaf bytes
    registration: IssuerRegistration
    params: MarkingParams


def fetch_registration(client: LogClient, key_id: bytes, *, allow_revoked: bool = False) -> LoggedRegistration | None:
    """This issuer's registration as logged (None if not registered), its self-signature checked."""
    info = next((i for i in client.issuers() if i.key_id == key_id), None)
    if info is None:
        return None
    if info.revoked and not allow_revoked:
        raise IssueError("revoked", f"issuer {key_id.hex()} was revoked by the log operator: {info.revocation_reason}")
    leaf = client.entries(info.index, info.index + 1)[0]
    try:
        signed = decode_entry(leaf.data)
        reg = signed.entry
        if not isinstance(reg, IssuerRegistration) or reg.key_id != key_id:
            raise EntryError(f"log entry {info.index} is not this issuer's registration")
        verify_entry_signature(signed, Ed25519PublicKey.from_public_bytes(reg.issuer_public_key))
        params = MarkingParams.from_cbor(reg.marking_params)
    except (EntryError, ParamsError) as exc:
        raise IssueError("bad-registration", f"registration at index {info.index}: {exc}") from exc
    return LoggedRegistration(info.index, leaf.data, reg, params)


@dataclass(frozen=True)
class RegisterResult:
    index: int
    created: bool
    key_id: bytes
    params: MarkingParams


def register_issuer(client: LogClient, keys: IssuerKeys, name: str, params: MarkingParams, *,
                    now: int | None = None) -> RegisterResult:
    """Publish the issuer key and marking parameters (needs the operator token on ``client``).

    Idempotent: an issuer already registered with the same parameters gets its logged index back;
    with other parameters it is refused (one registration per key: a new backbone or core layout
    needs a new issuer key)."""
    logged = fetch_registration(client, keys.key_id)
    if logged is not None:
        if logged.params != params:
            raise IssueError("registered-otherwise", f"issuer {keys.key_id.hex()} is registered (index {logged.index}) "
                             "with other marking parameters; use a new issuer key for another backbone or core layout")
        return RegisterResult(logged.index, False, keys.key_id, logged.params)
    try:
        entry = IssuerRegistration(keys.public_key, name, params.to_cbor(), int(time.time()) if now is None else now)
    except EntryError as exc:
        raise IssueError("registration", str(exc)) from exc
    result = client.register_issuer(sign_entry(entry, keys.signing_key).encode())
    return RegisterResult(result.index, result.created, keys.key_id, params)


@dataclass(frozen=True)
class RotateResult:
    old_key_id: bytes
    new_key_id: bytes
    index: int  # the new key's registration


def rotate_issuer(client: LogClient, directory, *, name: str | None = None, now: int | None = None) -> RotateResult:
    """Replace the signing key, keep the marking secret (spec/issue.md §8).

    The new key is registered with the old registration's marking parameters (the same secret gives
    the same verification key), so every earlier issuance stays traceable: `emshield trace` finds
    both registrations by that key. Resumable: an interrupted rotation reuses its new key. The old
    key is kept on disk as a retired file; revoking it in the log is the operator's decision."""
    from .keys import load_issuer, next_signing_key, retire_current_key

    current = load_issuer(directory)
    old = fetch_registration(client, current.key_id, allow_revoked=True)
    if old is None:
        raise IssueError("not-registered", f"issuer {current.key_id.hex()} is not registered: nothing to rotate")
    new = next_signing_key(directory)
    result = register_issuer(client, new, name or old.registration.name, old.params, now=now)
    old_id, new_id = retire_current_key(directory)
    return RotateResult(old_id, new_id, result.index)
