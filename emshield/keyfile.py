"""Reading a private key file that must be readable by its owner only (mode 0600 or stricter)."""

from __future__ import annotations

from pathlib import Path


def read_private_text(path: Path, what: str, error: type[Exception]) -> str:
    """The stripped ASCII text of ``path``; ``error`` if it is missing or others may read it.

    ``what`` names the file in messages (e.g. "signing key file"): a key that others can read is
    refused rather than used, so a careless copy is noticed before it leaks further."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise error(f"{what} {path} does not exist") from exc
    if st.st_mode & 0o077:
        raise error(f"{what} {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600")
    return path.read_text(encoding="ascii").strip()
