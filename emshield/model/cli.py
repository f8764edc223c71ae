"""`emshield decouple ...`: LoRA training, export, merge, recover, eval."""

from __future__ import annotations

import click

from emshield.notbuilt import not_built_command


@click.group(name="decouple")
def decouple_group() -> None:
    """Split a language model into a public backbone and a LoRA core, and join them back."""


for _name, _help in [
    ("train", "LoRA fine-tuning with peft from a YAML config."),
    ("export", "Write the core as a peft adapter folder and per-layer A/B factors."),
    ("merge", "Backbone + core -> full model folder."),
    ("recover", "Recover the core (Delta W and a rank-r factorisation) from a merged model and the backbone."),
    ("eval", "Task accuracy of backbone, adapter and merged model."),
]:
    decouple_group.add_command(not_built_command(_name, 4, _help))
