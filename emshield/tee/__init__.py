"""Sealing: device keys, key providers, sealed-core format, mount in memory (spec/sealed.md).

Entry points for other stages:

- issuer: ``seal_core(core, record.public, Binding(uuid, backbone_id, leaf_hash), suite=...) -> bytes``
  with ``record = DeviceRecord.load(path)``; the plaintext is the core file of
  ``emshield.core.core_to_bytes`` (``seal_stream(..., content_type=CONTENT_CORE)`` streams a core
  file that is already on disk).
- device: ``init_device(dir, provider, options)``, ``load_device(dir)``, and
  ``with mount(blob, device, backbone_id, leaf_hash) as m: m.core`` (zero-copy, wiped on exit).
"""

from emshield.tee.blobformat import CONTENT_CORE, CONTENT_OPAQUE, Binding, Header, read_header
from emshield.tee.device import Device, DeviceRecord, init_device, load_device
from emshield.tee.mount import MountedCore, attach_inherited, mount
from emshield.tee.seal import seal_bytes, seal_core, seal_stream

__all__ = [
    "CONTENT_CORE", "CONTENT_OPAQUE", "Binding", "Device", "DeviceRecord", "Header", "MountedCore",
    "attach_inherited", "init_device", "load_device", "mount", "read_header", "seal_bytes", "seal_core",
    "seal_stream",
]
