"""`emshield mark ...`: watermark and fingerprint a LoRA core."""

from __future__ import annotations

import click

from emshield.notbuilt import not_built_command

mark_group: click.Command = not_built_command(
    "mark", 5, "Watermark and/or fingerprint a core, choosing the policy from a fidelity tolerance."
)
