"""The command line: `bakfs.cli.main` parses and dispatches; one module per command group
prints for a person (the only place in bakfs that does)."""

from bakfs.cli.main import main

__all__ = ["main"]
