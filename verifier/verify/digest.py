"""The suspect's digest: what an attribution entry names the suspect by (spec/entry.md,
"Attribution") and what the forensic report prints (spec/report.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from verifier.report.data import FileDigest

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def suspect_digests(path: Path) -> tuple[tuple[FileDigest, ...], str]:
    """Per-file SHA-256 and the suspect's digest: the file's own, or for a folder the SHA-256 of
    its `sha256sum` listing (``<hex>  ./<path>`` lines, paths in byte order), which
    ``find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum`` reproduces."""
    if path.is_file():
        digest = file_sha256(path)
        return (FileDigest(".", digest, path.stat().st_size),), digest
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix().encode())
    out = tuple(FileDigest("./" + p.relative_to(path).as_posix(), file_sha256(p), p.stat().st_size) for p in files)
    listing = "".join(f"{d.sha256}  {d.path}\n" for d in out)
    return out, hashlib.sha256(listing.encode()).hexdigest()


def suspect_sha256(path: Path) -> bytes:
    return bytes.fromhex(suspect_digests(Path(path))[1])
