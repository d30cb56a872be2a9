"""The version of lowbit, read by packaging (pyproject.toml) and by the CLI."""

__version__ = "0.1.0"
