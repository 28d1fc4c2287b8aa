"""The command line: `bakfs.cli.main` parses and dispatches; one module per command group
prints for a person (the only place in bakfs that does).

Importing it first starts reading ahead the files a store command's start imports
(`bakfs.prefetch`), before importing them."""

import sys

from bakfs import prefetch

prefetch.start(sys.argv)

from bakfs.cli.main import main  # noqa: E402  (after the read-ahead began)

__all__ = ["main"]
