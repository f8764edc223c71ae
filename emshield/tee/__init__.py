"""Sealing: device keys, key providers, sealed-core format, mount in memory."""
