"""Sealing: device keys, key providers, sealed-core format, mount in memory (spec/sealed.md).

Entry points for other stages:

- issuer: ``seal_stream(src, dst, length, record.public, Binding(uuid, backbone_id, leaf_hash),
  suite=..., content_type=CONTENT_CORE)`` with ``record = DeviceRecord.load(path)``;
  ``core_to_safetensors_bytes(core)`` gives the plaintext of a core.
- device: ``init_device(dir, provider, options)``, ``load_device(dir)``, and
  ``with mount(blob, device, backbone_id, leaf_hash) as m: m.core`` (zero-copy, wiped on exit).
"""

from emshield.tee.blobformat import CONTENT_CORE, CONTENT_OPAQUE, Binding, Header, read_header
from emshield.tee.coreio import core_from_safetensors_buffer, core_to_safetensors_bytes
from emshield.tee.device import Device, DeviceRecord, init_device, load_device
from emshield.tee.mount import MountedCore, attach_inherited, mount
from emshield.tee.seal import seal_bytes, seal_stream

__all__ = [
    "CONTENT_CORE", "CONTENT_OPAQUE", "Binding", "Device", "DeviceRecord", "Header", "MountedCore",
    "attach_inherited", "core_from_safetensors_buffer", "core_to_safetensors_bytes", "init_device",
    "load_device", "mount", "read_header", "seal_bytes", "seal_stream",
]
