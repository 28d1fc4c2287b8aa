"""`python -m bakfs` runs the command line."""

import sys

from bakfs.cli import main

sys.exit(main())
