"""The plaintext of a sealed core is the core file `emshield/core/v1` (spec/decouple.md §2).

One serialisation for the whole project: `emshield.core.core_to_bytes` writes it and
`emshield.core.core_view` parses it without copying, so a mounted core's arrays are views into the
secret memory it was decrypted into. This module only maps the parser's `ModelFileError` onto the
sealing errors (`MalformedCoreError`), which `mount` and `emshield device seal` report.
"""

from __future__ import annotations

from emshield.core import LoraFactors, ModelFileError, core_view
from emshield.tee.errors import MalformedCoreError


def core_from_safetensors_buffer(buf: bytes | bytearray | memoryview) -> dict[str, LoraFactors]:
    """Zero-copy parse of core-file bytes (read-only arrays over `buf`); `MalformedCoreError` if invalid.

    The error carries only the message: a chained `ModelFileError` would keep the parser's frames,
    and with them views of `buf`, alive (a secret mapping with live views cannot be unmapped)."""
    try:
        return core_view(buf)
    except ModelFileError as e:
        problem = str(e)
    raise MalformedCoreError(f"not a valid core: {problem}")
