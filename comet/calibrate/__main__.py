"""`python -m comet.calibrate`: the command line of comet/calibrate/cli.py."""

import sys

from comet.calibrate.cli import main

if __name__ == "__main__":
    sys.exit(main())
