"""`python -m saga_actors ...`: the `saga-actors` command (see `saga_actors.cli`)."""

import sys

from saga_actors.cli import main

sys.exit(main())
