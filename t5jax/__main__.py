"""`python -m t5jax ...` runs the `t5jax` command."""

import sys

from t5jax.cli.main import main

if __name__ == "__main__":
  sys.exit(main())
