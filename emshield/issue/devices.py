"""Issuance targets: a device's UUID and public keys, one by one or from a CSV file
(spec/issue.md §4: header ``device_uuid,x25519_public,xwing_public``, keys in hex)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from emshield.tee.device import CSV_COLUMNS as DEVICE_COLUMNS
from emshield.tee.devicekey import DevicePublicKey

from .errors import IssueError

MAX_DEVICES_CSV = 64 << 20


@dataclass(frozen=True)
class DeviceTarget:
    """What an issuer seals to: the device UUID and public keys (a device record, or a CSV row)."""

    uuid: uuid.UUID
    public: DevicePublicKey


def read_devices_csv(path: Path) -> list[DeviceTarget]:
    """Rows of ``device_uuid,x25519_public,xwing_public`` (header required; keys in hex), as
    `emshield device show --json` prints them. Duplicate UUIDs are refused."""
    try:
        if path.stat().st_size > MAX_DEVICES_CSV:
            raise IssueError("devices", f"{path} is larger than {MAX_DEVICES_CSV} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IssueError("devices", f"cannot read {path}: {exc}") from exc
    rows = csv.DictReader(io.StringIO(text))
    if rows.fieldnames is None or tuple(rows.fieldnames) != DEVICE_COLUMNS:
        raise IssueError("devices", f"{path}: the header must be exactly {','.join(DEVICE_COLUMNS)}")
    out: list[DeviceTarget] = []
    seen: set[uuid.UUID] = set()
    for n, row in enumerate(rows, 2):
        try:
            if None in row or any(v is None for v in row.values()):
                raise ValueError("wrong number of fields")
            dev = uuid.UUID(row["device_uuid"])
            target = DeviceTarget(dev, DevicePublicKey(bytes.fromhex(row["x25519_public"]), bytes.fromhex(row["xwing_public"])))
        except ValueError as exc:
            raise IssueError("devices", f"{path} line {n}: {exc}") from exc
        if dev in seen:
            raise IssueError("devices", f"{path} line {n}: device {dev} is listed twice")
        seen.add(dev)
        out.append(target)
    if not out:
        raise IssueError("devices", f"{path} lists no devices")
    return out


def write_devices_csv(path: Path, devices: Iterable[DeviceTarget]) -> None:
    """The CSV `read_devices_csv` reads (for scripts and the demo)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(DEVICE_COLUMNS)
        for d in devices:
            w.writerow([str(d.uuid), d.public.x25519.hex(), d.public.xwing.hex()])
