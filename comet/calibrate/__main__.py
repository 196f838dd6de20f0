import sys

from comet.calibrate._all import main

sys.exit(main())
