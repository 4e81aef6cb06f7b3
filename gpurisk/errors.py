"""User-facing errors: each carries a one-line message and an exit code."""


class GpuriskError(Exception):
    """A clear, one-line failure the CLI prints without a traceback."""

    exit_code = 2


class BookError(GpuriskError):
    """A structural fault in a book: unreadable or missing file, table or column."""


class ValidationError(GpuriskError):
    """A bad row under ``--strict``."""


class ScenarioError(GpuriskError):
    """A bad scenario file or generator request."""


class ConfigError(GpuriskError):
    """A bad job or parameter file."""
