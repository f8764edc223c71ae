"""EMShield: protect and trace small language models on edge devices."""

__version__ = "0.1.0"
