"""`python -m bakfs` runs the command line."""

import sys

from bakfs.cli.main import main

sys.exit(main())
