"""`python -m sfu` runs the `keyroom` command."""

import sys

from sfu.cli import main

sys.exit(main())
