"""`python -m numpy_gpt2 SUBCOMMAND ...`: the same as the `numpy-gpt2` command."""

import sys

from numpy_gpt2.cli import main

sys.exit(main())
