"""Device side of issuance: install a bundle after verifying it offline, and run the installed core.

State lives in the device directory beside `device.json` (spec/bundle.md, "On the device"):

- ``log.vkey``: the pinned log verifier key (C2SP signed-note key string, one line). The first
  install that is given ``log_key`` pins it; later installs and runs use it, and a different key
  is refused rather than silently re-pinned (remove the file to change logs on purpose).
- ``core.emshield-bundle``: the installed bundle, written only after every check has passed.

Install checks, in order: bundle format, issuer and issuance signatures, inclusion proofs and the
checkpoint signature against the pinned key (:func:`emshield.bundle.verify_bundle`); the sealed
core's header is bound to this device, the issuance's backbone and the issuance's leaf hash; and a
trial unseal into secret memory verifies every chunk and that the plaintext is a core (then wiped).
Run re-verifies the stored bundle, checks the backbone's id, unseals the core into secret memory,
adds ΔW into the backbone's weights in RAM and generates; no plaintext core touches the disk.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from emshield.bundle import (
    FILE_SUFFIX,
    Bundle,
    LogKeyError,
    VerifiedBundle,
    parse_bundle,
    parse_log_key,
    read_bundle_file,
    verify_bundle,
    write_bundle_file,
)
from emshield.tee import errors as tee_errors
from emshield.tee.blobformat import CONTENT_CORE, Binding, read_header
from emshield.tee.device import Device, load_device
from emshield.tee.mount import mount
from emshield.tee.seal import check_binding
from emshield.tlog.checkpoint import NoteVerifier

PINNED_KEY_FILE = "log.vkey"
INSTALLED_FILE = "core" + FILE_SUFFIX
# Generation stops at end-of-sequence; the cap only bounds a model that never stops. Generous: an
# answer of a few hundred tokens (a paragraph of Chinese is 100+) must not be cut.
DEFAULT_MAX_NEW_TOKENS = 1024


class DeployError(Exception):
    """The device refuses a bundle or cannot run it; ``check`` names the reason (spec/bundle.md)."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


# --- the pinned log key ----------------------------------------------------------------------------


def pinned_log_key(directory: Path) -> NoteVerifier | None:
    path = Path(directory) / PINNED_KEY_FILE
    return _log_key(str(path)) if path.is_file() else None


def _log_key(value: str) -> NoteVerifier:
    try:
        return parse_log_key(value)
    except LogKeyError as exc:
        raise DeployError("log-key", str(exc)) from exc


def _resolve_log_key(directory: Path, given: str | None) -> tuple[NoteVerifier, bool]:
    """(key to verify with, whether it still has to be pinned)."""
    pinned = pinned_log_key(directory)
    if given is None:
        if pinned is None:
            raise DeployError("log-key", f"no log key pinned in {directory}: give the log's verifier key once")
        return pinned, False
    key = _log_key(given)
    if pinned is not None and pinned.verifier_key() != key.verifier_key():
        raise DeployError("log-key", f"the given log key differs from the one pinned in {directory / PINNED_KEY_FILE} "
                          f"({pinned.verifier_key()}); remove that file to trust another log")
    return key, pinned is None


def _write_small(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- install ---------------------------------------------------------------------------------------

_BINDING_CHECKS = [(tee_errors.WrongDeviceError, "wrong-device"), (tee_errors.WrongBackboneError, "wrong-backbone"),
                   (tee_errors.WrongIssuanceError, "wrong-issuance")]


def check_sealed_core(verified: VerifiedBundle, device_uuid) -> None:
    """The sealed core's header must name this device, the issuance's backbone id and leaf hash,
    and hold a core. Checks ``wrong-device``, ``wrong-backbone``, ``wrong-issuance``, ``malformed``."""
    try:
        header = read_header(io.BytesIO(verified.sealed_core))
    except tee_errors.SealError as exc:
        raise DeployError("malformed", f"sealed core: {exc}") from exc
    if header.content_type != CONTENT_CORE:
        raise DeployError("malformed", f"sealed content is {header.content_name!r}, not a core")
    try:
        check_binding(header, Binding(device_uuid, verified.backbone_id, verified.issuance_leaf_hash))
    except tee_errors.BindingError as exc:
        check = next(name for cls, name in _BINDING_CHECKS if isinstance(exc, cls))
        raise DeployError(check, str(exc)) from exc


@dataclass(frozen=True)
class Installed:
    path: Path
    verified: VerifiedBundle
    memory_kind: str
    tensors: int
    pinned_now: bool


def install_bundle(directory: Path, data: bytes, log_key: str | None = None, *,
                   allow_unlocked: bool = False) -> Installed:
    """Verify ``data`` (bundle bytes) for the device in ``directory`` and install it.

    Raises BundleError / BundleVerificationError (bundle), DeployError (device checks) or a
    tee SealError (device record, key provider, unseal); nothing is written unless all pass."""
    directory = Path(directory)
    device = load_device(directory)
    verifier, pin = _resolve_log_key(directory, log_key)
    verified = verify_bundle(parse_bundle(data), verifier)
    check_sealed_core(verified, device.uuid)
    with mount(verified.sealed_core, device, verified.backbone_id, verified.issuance_leaf_hash,
               allow_unlocked=allow_unlocked) as mounted:
        kind, tensors = mounted.memory_kind, len(mounted.core or {})
    if pin:
        _write_small(directory / PINNED_KEY_FILE, (verifier.verifier_key() + "\n").encode("ascii"))
    path = write_bundle_file(directory / INSTALLED_FILE, verified.bundle, mode=0o600)
    return Installed(path, verified, kind, tensors, pin)


def installed_bundle(directory: Path) -> VerifiedBundle:
    """The installed bundle, re-verified against the pinned log key (cheap, offline)."""
    directory = Path(directory)
    path = directory / INSTALLED_FILE
    if not path.is_file():
        raise DeployError("not-installed", f"no bundle installed in {directory} (run `emshield device install`)")
    verifier, _ = _resolve_log_key(directory, None)
    bundle: Bundle = read_bundle_file(path)
    return verify_bundle(bundle, verifier)


# --- run -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    text: str
    prompt: str
    device_uuid: str
    issuance_index: int
    memory_kind: str
    complete: bool = True  # ended at end-of-sequence (or is one of the choices); False: cut at the cap
    new_tokens: int = 0


def merge_into_model(model, core) -> None:
    """Add each layer's ΔW into the loaded model's weights in place (RAM only)."""
    import torch

    from emshield.model.merge import merged_tensor

    params = dict(model.named_parameters())
    for name, factors in core.items():
        p = params.get(name)
        if p is None:
            raise DeployError("core-mismatch", f"core layer {name!r} is not a weight of the backbone model")
        if tuple(p.shape) != factors.shape:
            raise DeployError("core-mismatch", f"core layer {name!r}: ΔW {factors.shape} vs weight {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(merged_tensor(p.detach(), factors))


def run_prompt(directory: Path, backbone: Path, prompt: str, *, input_text: str = "", raw: bool = False,
               prompt_format: str = "plain", choices: Sequence[str] = (),
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, allow_unlocked: bool = False,
               stage: Callable[[str], None] | None = None) -> Answer:
    """Answer ``prompt`` with the installed core merged into ``backbone``, greedily: up to
    end-of-sequence (at most ``max_new_tokens``), or restricted to ``choices`` when given (a
    classification prompt then answers exactly one of them).

    Unless ``raw``, the prompt is the instruction of the training prompt format (emshield.model.prompt)
    with ``input_text`` as its input. ``stage`` is told each step's name (for progress display)."""
    from emshield.model.decode import choose, generate
    from emshield.model.hf import load_causal_lm, load_tokenizer
    from emshield.model.io import backbone_id
    from emshield.model.prompt import answer_ids, prompt_ids

    say = stage or (lambda _: None)
    directory = Path(directory)
    device: Device = load_device(directory)
    say("verify bundle")
    verified = installed_bundle(directory)
    check_sealed_core(verified, device.uuid)
    say("check backbone")
    if backbone_id(backbone) != verified.backbone_id.hex():
        raise DeployError("wrong-backbone", f"{backbone} is not the backbone {verified.backbone_id.hex()} the core "
                          "was issued for")
    say("load backbone")
    model, tok = load_causal_lm(backbone), load_tokenizer(backbone)
    if raw:
        ids = list(tok(prompt)["input_ids"])
    else:
        try:
            ids = prompt_ids(tok, {"instruction": prompt, "input": input_text}, prompt_format)
        except ValueError as exc:
            raise DeployError("prompt-format", str(exc)) from exc
    say("unseal and merge")
    with mount(verified.sealed_core, device, verified.backbone_id, verified.issuance_leaf_hash,
               allow_unlocked=allow_unlocked) as mounted:
        merge_into_model(model, mounted.core)
        kind = mounted.memory_kind
    say("generate")
    text = tok.decode(ids)
    if choices:
        chosen = choose(model, tok, ids, choices)
        return Answer(chosen, text, str(verified.device_uuid), verified.issuance_index, kind, True,
                      len(answer_ids(tok, chosen)))
    gen = generate(model, tok, [ids], max_new_tokens)[0]
    return Answer(gen.text, text, str(verified.device_uuid), verified.issuance_index, kind, gen.complete,
                  gen.tokens)
