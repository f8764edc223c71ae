"""`emshield-audit`: the auditor's procedure and state (`auditor`), its replay cache (`cache`) and
command line (`cli`). spec/audit.md."""
