"""`python -m captioner.entrypoints.cli`, as the bench and tests run the command."""

import sys

from captioner.entrypoints.cli import main

sys.exit(main())
