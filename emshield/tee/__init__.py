"""Sealing: device keys, key providers, sealed-core format, mount in memory (spec/sealed.md).

Entry points for other stages:

- issuer: ``seal_core(core, record.public, Binding(uuid, backbone_id, leaf_hash), suite=...) -> bytes``
  with ``record = DeviceRecord.load(path)``; the plaintext is the core file of
  ``emshield.core.core_to_bytes`` (``seal_stream(..., content_type=CONTENT_CORE)`` streams a core
  file that is already on disk).
- device: ``init_device(dir, provider, options)``, ``load_device(dir)``, and
  ``with mount(blob, device, backbone_id, leaf_hash) as m: m.core`` (zero-copy, wiped on exit);
  pass ``memory_kinds=IN_PROCESS_KINDS`` when the core is used in this process only (no fd for a
  child): memfd_secret first as always, but a locked fallback that unseals several times faster.
"""

from emshield.tee.blobformat import CONTENT_CORE, CONTENT_OPAQUE, Binding, Header, read_header
from emshield.tee.device import Device, DeviceRecord, init_device, load_device
from emshield.tee.mount import MountedCore, attach_inherited, mount
from emshield.tee.seal import seal_bytes, seal_core, seal_stream
from emshield.tee.secmem import IN_PROCESS_KINDS, SHAREABLE_KINDS

__all__ = [
    "CONTENT_CORE", "CONTENT_OPAQUE", "IN_PROCESS_KINDS", "SHAREABLE_KINDS", "Binding", "Device", "DeviceRecord",
    "Header", "MountedCore",
    "attach_inherited", "init_device", "load_device", "mount", "read_header", "seal_bytes", "seal_core",
    "seal_stream",
]
