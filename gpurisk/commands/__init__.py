"""CLI subcommands; each module has ``add_parser(subparsers)`` setting ``func`` to its runner."""
