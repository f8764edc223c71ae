"""Errors of the model package, importable without torch (so `emshield --help` starts fast)."""


class ModelFileError(ValueError):
    """A model file is missing, malformed, unsafe or not what the caller asked for."""
