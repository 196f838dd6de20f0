"""n_c chosen by simulation: the floor above the simulator and the planner (the layer and the experiments use it).

    sweep   NC_CANDIDATES (the one candidate list), best_nc (each layer alone over the candidates), tune_policy
    cache   NcCache (tuned n_c per shape bucket, in memory or a JSON file) and auto_nc(plan, routing)
"""

from comet.tuning.cache import NcCache, auto_nc
from comet.tuning.sweep import NC_CANDIDATES, QUICK_NC_CANDIDATES, best_nc, tune_policy

__all__ = ["NC_CANDIDATES", "QUICK_NC_CANDIDATES", "NcCache", "auto_nc", "best_nc", "tune_policy"]
