"""The test suite's shared helpers, one importable package (``pythonpath = ["tests"]`` in
pyproject.toml): test modules and conftests import what they need from here instead of loading
each other by path.

- `paths`: the repository's fixed places (fixture backbone, spec vectors, console scripts).
- `ci`: what must not be skipped under CI=true.
- `logs`: real `emshield-log` stores and servers on 127.0.0.1, deterministic keys and entries.
- `witnesses`: a real `emshield-witness serve` on 127.0.0.1.
- `cores`: random cores, marking parameters and the attacks the marking and verify tests share.
- `tee`: sealing helpers and a real swtpm.
"""
