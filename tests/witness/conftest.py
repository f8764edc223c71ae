"""Witness tests: real witnesses and logs on 127.0.0.1 (`_kit.witnesses`, `_kit.logs`)."""

from _kit.logs import issuer_key, log_files, server_factory  # noqa: F401  (fixtures)
from _kit.witnesses import witness_factory, witness_key  # noqa: F401  (fixtures)
