"""Device identity: UUID, public keys and key-provider settings in `device.json` (spec/sealed.md §Device record).

The record holds nothing secret (the TPM provider's object blobs are encrypted by the TPM), so it
can be shown to an issuer as is: its public keys are what a core is sealed to.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emshield.tee.blobformat import Binding
from emshield.tee.devicekey import DevicePublicKey, new_secret, wipe
from emshield.tee.errors import DeviceRecordError, UnsupportedVersionError
from emshield.tee.providers import KeyProvider, make_provider
from emshield.tee.providers.base import require_available

RECORD_FILE = "device.json"
RECORD_FORMAT = "emshield-device/v1"
# The issuer's devices CSV (spec/issue.md §4): this header, then one row per device, keys in hex.
CSV_COLUMNS = ("device_uuid", "x25519_public", "xwing_public")
MAX_RECORD = 64 << 10
_FIELDS = {"format", "uuid", "provider", "provider_config", "x25519_public", "xwing_public"}


@dataclass(frozen=True)
class DeviceRecord:
    uuid: uuid.UUID
    provider: str
    provider_config: dict[str, Any]
    public: DevicePublicKey

    def to_json(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "uuid": str(self.uuid), "provider": self.provider,
                "provider_config": self.provider_config, "x25519_public": self.public.x25519.hex(),
                "xwing_public": self.public.xwing.hex()}

    def csv_row(self) -> tuple[str, str, str]:
        """This device's row of the issuer's devices CSV (CSV_COLUMNS)."""
        return str(self.uuid), self.public.x25519.hex(), self.public.xwing.hex()

    @classmethod
    def from_json(cls, obj: object) -> DeviceRecord:
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise DeviceRecordError(f"device record must have exactly the fields {sorted(_FIELDS)}")
        if obj["format"] != RECORD_FORMAT:
            raise UnsupportedVersionError(f"device record format {obj['format']!r} is not {RECORD_FORMAT}")
        try:
            if not isinstance(obj["provider_config"], dict) or not isinstance(obj["provider"], str):
                raise TypeError("provider must be a string and provider_config an object")
            return cls(uuid.UUID(obj["uuid"]), obj["provider"], obj["provider_config"],
                       DevicePublicKey(bytes.fromhex(obj["x25519_public"]), bytes.fromhex(obj["xwing_public"])))
        except (TypeError, ValueError, AttributeError) as e:
            raise DeviceRecordError(f"malformed device record: {e}") from None

    @classmethod
    def load(cls, path: Path) -> DeviceRecord:
        """Read a record file (device dir or the file itself), bounded and strict."""
        path = Path(path)
        if path.is_dir():
            path = path / RECORD_FILE
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_RECORD + 1)
        except FileNotFoundError:
            raise DeviceRecordError(f"no device record at {path} (run `emshield device init`)") from None
        if len(raw) > MAX_RECORD:
            raise DeviceRecordError(f"device record {path} exceeds {MAX_RECORD} bytes")
        try:
            return cls.from_json(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DeviceRecordError(f"device record {path} is not JSON: {e}") from None


@dataclass
class Device:
    """A provisioned device: its record, directory and key provider."""

    record: DeviceRecord
    directory: Path
    provider: KeyProvider

    @property
    def uuid(self) -> uuid.UUID:
        return self.record.uuid

    def binding(self, backbone_id: bytes, leaf_hash: bytes) -> Binding:
        return Binding(self.record.uuid, backbone_id, leaf_hash)

    @contextmanager
    def unlock(self) -> Iterator[bytearray]:
        """The device secret, checked against the record's public keys, wiped on exit."""
        require_available(self.provider)
        with self.provider.unlock() as secret:
            if DevicePublicKey.from_secret(secret) != self.record.public:
                raise DeviceRecordError("the key provider's secret does not match the device record's public keys")
            yield secret


def init_device(directory: Path, provider_name: str = "file", options: dict[str, Any] | None = None) -> Device:
    """Create a device identity: UUID, secret in the provider, record written last (O_EXCL)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    record_path = directory / RECORD_FILE
    if record_path.exists():
        raise DeviceRecordError(f"{record_path} exists: this directory already holds a device identity")
    provider = make_provider(provider_name, directory, dict(options or {}))
    require_available(provider)
    device_uuid = uuid.uuid4()
    secret = new_secret()
    try:
        public = DevicePublicKey.from_secret(secret)
        provider.create(device_uuid, secret)
    finally:
        wipe(secret)
    record = DeviceRecord(device_uuid, provider_name, provider.config(), public)
    fd = os.open(record_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(record.to_json(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return Device(record, directory, provider)


def load_device(directory: Path) -> Device:
    record = DeviceRecord.load(Path(directory))
    return Device(record, Path(directory), make_provider(record.provider, Path(directory), record.provider_config))
