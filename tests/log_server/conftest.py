"""Log-server tests: real stores made by `emshield-log init`, real servers on 127.0.0.1 (`_kit.logs`)."""

from _kit.logs import issuer_key, log_files, server_factory  # noqa: F401  (fixtures)
