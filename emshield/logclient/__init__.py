"""Clients of the EMShield log, shared by the issuer, the device, the verifier and the auditor.

`http` speaks the log's JSON API (spec/api.md); `tiles` reads C2SP tlog-tiles from the log or any
static mirror of it (spec/tiles.md). Both only fetch and parse strictly, with bounded reads: what
the bytes prove is checked with the pure log core (`emshield.tlog`), never assumed.
"""
