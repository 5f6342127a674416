"""`python -m raytune_ft.search`: run a search (see `raytune_ft.search.cli`)."""

import sys

from raytune_ft.search.cli import main

sys.exit(main())
