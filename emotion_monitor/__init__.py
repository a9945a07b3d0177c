"""The `emotion-monitor` command line: one console script whose subcommands live in their rooms."""

__version__ = "0.1.0"
