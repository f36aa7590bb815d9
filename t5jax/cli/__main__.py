"""`python -m t5jax.cli ...`, as before the command line became a folder."""

import sys

from t5jax.cli.main import main

if __name__ == "__main__":
  sys.exit(main())
