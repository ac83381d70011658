"""`python -m services.ops ...`: the same as the installed `mail-ops` command."""

import sys

from services.ops.cli import main

sys.exit(main())
