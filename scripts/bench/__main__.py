"""python3 -m bench: see main.py (scripts/bench.sh runs it)."""

import sys

if sys.version_info < (3, 11):  # noqa: UP036  (the check is for the older Pythons it turns away)
    sys.exit(f"bench: needs Python 3.11 or newer (this is {sys.version.split()[0]})")

from .main import main  # imported after the version check

sys.exit(main(sys.argv[1:]))
