"""The forensic report of one verification (spec/report.md): a self-contained HTML file, and
optionally its PDF print. Pure rendering from the verdict and its evidence: nothing here reads the
log or the network (an import-linter contract in pyproject.toml says so)."""
