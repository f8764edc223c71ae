"""`emshield`: the issuer and device command line.

Each lifecycle stage owns its command group in its own package; this module only joins them.
"""

from __future__ import annotations

import click

from emshield import __version__, exit_codes
from emshield.device.cli import device_group
from emshield.issue.cli import issue_cmd, issuer_group, trace_cmd
from emshield.marking.cli import mark_group
from emshield.model.cli import decouple_group


@click.group(cls=exit_codes.Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="emshield")
def main() -> None:
    """EMShield: decouple, mark, seal and issue small language models, traceably.

    \b
    Lifecycle:
      decouple  LoRA fine-tuning; split a model into public backbone and core
      mark      watermark and fingerprint a core (chaos FSM keyed)
      issuer    issuer keys and registration in the transparency log
      issue     issue a marked, sealed core to a device (log entry + bundle)
      trace     trace a leaked model to issuances with the secret tier; disclose
      device    device identity, sealed-core install, mount and run
    """


main.add_command(decouple_group)
main.add_command(mark_group)
main.add_command(issuer_group)
main.add_command(issue_cmd)
main.add_command(trace_cmd)
main.add_command(device_group)

if __name__ == "__main__":  # pragma: no cover
    main()
