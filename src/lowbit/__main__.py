"""``python -m lowbit ...`` runs the ``lowbit`` command (so ``torchrun -m lowbit ...`` works)."""

import sys

from lowbit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
