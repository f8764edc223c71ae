"""Marking: keyed chaos FSM, 48-bit watermark and invariant fingerprint of a LoRA core."""
