"""JSON shapes of the API's answers (spec/api.md §2), written once for every route that sends them."""

from __future__ import annotations

import base64
from typing import Any

from .sequencer import Appended
from .storage import AttributionIndex, IssuanceIndex, IssuerRecord, LeafRecord


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def appended_json(a: Appended) -> dict[str, Any]:
    return {"index": a.index, "leaf_hash": b64(a.leaf_hash), "created": a.created}


def issuer_json(i: IssuerRecord) -> dict[str, Any]:
    return {"key_id": i.key_id.hex(), "public_key": b64(i.public_key), "name": i.name, "index": i.leaf_index,
            "registered_at": i.registered_at, "revoked": i.revoked_at is not None,
            "revoked_at": i.revoked_at, "revocation_reason": i.revocation_reason}


def issuance_json(row: IssuanceIndex, leaf: LeafRecord, has_side_record: bool) -> dict[str, Any]:
    return {"index": row.leaf_index, "leaf_hash": b64(leaf.leaf_hash), "leaf": b64(leaf.data),
            "issuer_key_id": row.issuer_key_id.hex(), "device_uuid": row.device_uuid,
            "has_side_record": has_side_record}


def attribution_json(row: AttributionIndex, leaf: LeafRecord) -> dict[str, Any]:
    return {"index": row.leaf_index, "leaf_hash": b64(leaf.leaf_hash), "leaf": b64(leaf.data),
            "issuer_key_id": row.issuer_key_id.hex(), "issuance_index": row.issuance_index}
