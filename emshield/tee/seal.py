"""Streaming seal and unseal of any byte stream (spec/sealed.md).

Seal: fresh 256-bit data key, wrapped to the device with HPKE (the header, device UUID, backbone id
and leaf hash go into HPKE `info`); payload key = HKDF(data key, header hash); plaintext encrypted
in chunks with AES-256-GCM, nonce = chunk index, AAD = label ‖ header hash ‖ index ‖ final flag
(the STREAM construction), so truncation, reordering, dropping and extension all fail a tag.

Memory stays bounded by one chunk on both sides; unseal decrypts straight into a caller-supplied
buffer (the secret memory of :mod:`emshield.tee.mount`) and only returns once every tag and the end
of the stream have been verified.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
from collections.abc import Callable
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from emshield.core import Core, core_to_bytes
from emshield.tee import devicekey
from emshield.tee.blobformat import (
    CONTENT_CORE,
    CONTENT_OPAQUE,
    DEFAULT_CHUNK,
    DEFAULT_SUITE,
    KEY_LEN,
    LABEL_CHUNK,
    LABEL_PAYLOAD_KEY,
    LABEL_WRAP,
    SUITES,
    TAG_LEN,
    Binding,
    Header,
)
from emshield.tee.devicekey import DevicePublicKey
from emshield.tee.errors import (
    KeyUnwrapError,
    TamperedBlobError,
    TrailingDataError,
    TruncatedBlobError,
    WrongBackboneError,
    WrongDeviceError,
    WrongIssuanceError,
)

Progress = Callable[[int], None]


def chunk_nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack(">Q", index)


def chunk_aad(header_hash: bytes, index: int, final: bool) -> bytes:
    return LABEL_CHUNK + header_hash + struct.pack(">QB", index, 1 if final else 0)


def payload_key(data_key: bytes | bytearray, header_hash: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None,
                info=LABEL_PAYLOAD_KEY + header_hash).derive(bytes(data_key))


def wrap_info(header: Header) -> bytes:
    return LABEL_WRAP + header.fixed_bytes()


def _read_full(src: BinaryIO, view: memoryview) -> int:
    """readinto until the view is full or the stream ends (raw files may return short reads)."""
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _chunk_reader(src: BinaryIO, max_len: int) -> Callable[[int], memoryview]:
    """read(n) for ciphertext chunks: slices of the blob itself when it is already in memory (a
    BytesIO: no copy of 100 MiB through a bounce buffer), else readinto one reused buffer.

    The slices view the bytes object that `getvalue()` returns (CPython shares, does not copy, the
    bytes a BytesIO was made from), not the BytesIO, which can therefore still be closed."""
    if isinstance(src, io.BytesIO):
        whole = memoryview(src.getvalue())

        def from_memory(n: int) -> memoryview:
            pos = src.tell()
            chunk = whole[pos: pos + n]
            src.seek(pos + len(chunk))
            return chunk
        return from_memory
    view = memoryview(bytearray(max_len))
    return lambda n: view[: _read_full(src, view[:n])]


def encrypt_chunks(src: BinaryIO, dst: BinaryIO, header: Header, data_key: bytes | bytearray,
                   progress: Progress | None = None) -> None:
    """Encrypt exactly header.plaintext_length bytes of src into dst as the blob's chunk sequence.

    Deterministic given (header, data key, plaintext): the payload test vectors check this layer."""
    hh = header.hash()
    aead = AESGCM(payload_key(data_key, hh))
    inbuf = bytearray(header.chunk_size)
    outbuf = bytearray(header.chunk_size + TAG_LEN)
    inview, outview = memoryview(inbuf), memoryview(outbuf)
    remaining = header.plaintext_length
    for index in range(header.chunk_count):
        n = min(header.chunk_size, remaining)
        if _read_full(src, inview[:n]) != n:
            raise ValueError(f"plaintext stream ended {remaining} bytes early")
        remaining -= n
        final = index == header.chunk_count - 1
        written = aead.encrypt_into(chunk_nonce(index), inview[:n], chunk_aad(hh, index, final), outview[: n + TAG_LEN])
        dst.write(outview[:written])
        if progress:
            progress(n)
    if src.read(1):
        raise ValueError("plaintext stream is longer than the declared length")
    devicekey.wipe(inbuf)


def seal_stream(src: BinaryIO, dst: BinaryIO, length: int, recipient: DevicePublicKey, binding: Binding, *,
                suite: str = DEFAULT_SUITE, content_type: int = CONTENT_OPAQUE, chunk_size: int = DEFAULT_CHUNK,
                progress: Progress | None = None) -> Header:
    """Seal `length` bytes read from src to the device, writing the blob to dst."""
    s = SUITES[suite]
    draft = Header(s, content_type, chunk_size, length, binding, b"")
    data_key = bytearray(os.urandom(KEY_LEN))
    try:
        pub = recipient.x25519_public_key() if suite == "x25519" else recipient.xwing_public_key()
        wrapped = s.hpke.encrypt(bytes(data_key), pub, info=wrap_info(draft))
        header = dataclasses.replace(draft, wrapped_key=wrapped)
        dst.write(header.encode())
        encrypt_chunks(src, dst, header, data_key, progress)
    finally:
        devicekey.wipe(data_key)
    return header


def seal_bytes(plaintext: bytes | bytearray | memoryview, recipient: DevicePublicKey, binding: Binding,
               **options) -> bytes:
    out = io.BytesIO()
    seal_stream(io.BytesIO(plaintext), out, len(plaintext), recipient, binding, **options)
    return out.getvalue()


def seal_core(core: Core, recipient: DevicePublicKey, binding: Binding, *, suite: str = DEFAULT_SUITE,
              chunk_size: int = DEFAULT_CHUNK) -> bytes:
    """The issuer's entry point: seal a core (as its core file, `emshield/core/v1`) to one device.

    `recipient` is the device record's public keys (`DeviceRecord.load(path).public`); `binding`
    names that device's UUID, the backbone id and the issuance's log leaf hash. The device opens the
    blob with `mount(blob, device, backbone_id, leaf_hash)` and gets the same core back."""
    return seal_bytes(core_to_bytes(core), recipient, binding, suite=suite, content_type=CONTENT_CORE,
                      chunk_size=chunk_size)


def check_binding(header: Header, expected: Binding) -> None:
    """Say which binding differs before any key is touched (each field is also authenticated by HPKE)."""
    got = header.binding
    if got.device_uuid != expected.device_uuid:
        raise WrongDeviceError(f"blob is sealed to device {got.device_uuid}, this device is {expected.device_uuid}")
    if got.backbone_id != expected.backbone_id:
        raise WrongBackboneError(
            f"blob is bound to backbone {got.backbone_id.hex()}, expected {expected.backbone_id.hex()}")
    if got.leaf_hash != expected.leaf_hash:
        raise WrongIssuanceError(
            f"blob is bound to issuance (leaf hash) {got.leaf_hash.hex()}, expected {expected.leaf_hash.hex()}")


def unwrap_data_key(header: Header, device_secret: bytes | bytearray) -> bytearray:
    """Open the HPKE-wrapped data key with the device secret's key for the blob's suite."""
    if header.suite.name == "x25519":
        private = devicekey.x25519_private_key(device_secret)
    else:
        private = devicekey.xwing_private_key(device_secret)
    try:
        return bytearray(header.suite.hpke.decrypt(header.wrapped_key, private, info=wrap_info(header)))
    except InvalidTag:
        raise KeyUnwrapError(
            "cannot unwrap the data key: the blob was sealed to another key for this device UUID, "
            "or its header was altered") from None


def decrypt_chunks(src: BinaryIO, header: Header, data_key: bytes | bytearray, out: memoryview,
                   progress: Progress | None = None) -> None:
    """Decrypt every chunk of src into out (len == plaintext length), verifying all tags and the end.

    On failure `out` holds partial plaintext: the caller owns it and must wipe it (mount does)."""
    if len(out) != header.plaintext_length:
        raise ValueError("output buffer does not match the plaintext length")
    hh = header.hash()
    aead = AESGCM(payload_key(data_key, hh))
    read_chunk = _chunk_reader(src, header.chunk_size + TAG_LEN)
    offset = 0
    for index in range(header.chunk_count):
        n = min(header.chunk_size, header.plaintext_length - offset)
        chunk = read_chunk(n + TAG_LEN)
        if len(chunk) != n + TAG_LEN:
            raise TruncatedBlobError(f"blob ends inside chunk {index} of {header.chunk_count}")
        final = index == header.chunk_count - 1
        try:
            aead.decrypt_into(chunk_nonce(index), chunk, chunk_aad(hh, index, final), out[offset: offset + n])
        except InvalidTag:
            raise TamperedBlobError(
                f"chunk {index} of {header.chunk_count} failed authentication "
                "(blob tampered, chunks reordered or dropped, or header altered)") from None
        offset += n
        if progress:
            progress(n)
    if src.read(1):
        raise TrailingDataError("bytes follow the final chunk (blob extended or concatenated)")


def open_blob(blob: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO) -> BinaryIO:
    """A readable binary stream over a blob given as a path, bytes or an open stream."""
    if isinstance(blob, (bytes, bytearray, memoryview)):
        return io.BytesIO(blob)
    if isinstance(blob, (str, os.PathLike)):
        return open(blob, "rb")  # noqa: SIM115 - the caller closes it
    return blob

