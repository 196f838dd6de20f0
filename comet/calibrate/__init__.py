from comet.calibrate._all import *  # noqa: F403  (temporary during the split)
from comet.calibrate._all import _bar, _run_part, _write  # noqa: F401
