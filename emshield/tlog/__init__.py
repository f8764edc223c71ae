"""The transparency log's pure core (RFC 9162 Merkle tree, C2SP checkpoints, CBOR entries)."""
