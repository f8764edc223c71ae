"""Issuing cores to devices (spec/issue.md): the issuer's secrets (`keys`), its registration in the
log (`registration`), the devices issued to (`devices`), the pipeline (`pipeline`), refusals
(`errors`) and the `emshield issuer` / `emshield issue` commands (`cli`)."""
