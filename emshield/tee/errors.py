"""Typed failures of sealing, unsealing, key providers and mount.

Every failure a device can meet has its own class, so callers (and the CLI) can say exactly what
happened instead of "decryption failed": a blob for another device is not the same incident as a
tampered one. All derive from :class:`SealError`.
"""

from __future__ import annotations


class SealError(Exception):
    """Base class of every sealing/unsealing/key-provider failure."""


class MalformedBlobError(SealError):
    """The bytes are not a sealed blob at all, or a header field is out of range."""


class UnsupportedVersionError(MalformedBlobError):
    """The blob (or device record) names a format version this code does not know."""


class UnsupportedSuiteError(MalformedBlobError):
    """The blob names an HPKE KEM/KDF/AEAD combination this code does not offer."""


class BindingError(SealError):
    """The blob is intact but bound to something other than what the caller expects."""


class WrongDeviceError(BindingError):
    """The blob was sealed to another device (UUID in the header differs)."""


class WrongBackboneError(BindingError):
    """The blob belongs to another backbone (backbone id differs)."""


class WrongIssuanceError(BindingError):
    """The blob belongs to another issuance (log entry leaf hash differs)."""


class TamperedBlobError(SealError):
    """Authentication failed: the blob was altered, reordered, truncated or extended."""


class KeyUnwrapError(TamperedBlobError):
    """HPKE could not open the wrapped data key: another key for this UUID, or an altered header."""


class TruncatedBlobError(TamperedBlobError):
    """The blob ends before its header says it should."""


class TrailingDataError(TamperedBlobError):
    """Bytes follow the final chunk (an extension attempt, or a concatenation)."""


class ProviderError(SealError):
    """A key provider failed (I/O, permissions, TPM or keyring error)."""


class ProviderUnavailableError(ProviderError):
    """The key provider cannot work here (no keyctl, no TPM, no tpm2-pytss); the message says why."""


class KeyFilePermissionError(ProviderError):
    """The device key file is readable by others, not owned by us, or not a regular file."""


class DeviceRecordError(SealError):
    """The device record (device.json) is missing, malformed or does not match its key."""


class InsecureMemoryError(SealError):
    """No locked/secret memory large enough for the plaintext, and unlocked memory was not allowed."""


class MalformedCoreError(SealError):
    """The unsealed plaintext is not a valid core (safetensors layout of spec/sealed.md §Core)."""
