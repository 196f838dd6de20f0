"""Calibration: measure a GPU (and its links) and write the HardwareProfile the simulator and the planner load.

    python -m comet.calibrate --name h200_x1        # -> profiles/h200_x1.json, results/calibration/h200_x1_<date>.csv

    cli           the command: parts a-e, the CSV, the log and the profile JSON
    measurements  CSV rows (Measurement), the Recorder that writes them, read_measurements
    fit           whole-wave tile problems and the fit of the GEMM efficiency formula (pure, no GPU)
    assemble      a HardwareProfile from measurement rows, with the source of every field (no GPU)
    gpu, comm     the measuring parts (CUDA): tiles, hbm, launch; comm programs, link
    settings      the sweep points of each part

Importing the package loads only the pure modules (no kernels, no GPU).
"""

from comet.calibrate.assemble import PART_FIELDS, assemble_profile, profile_from_csv, profile_table
from comet.calibrate.fit import GemmFit, TilePoint, efficiency_model, fit_gemm_model, tile_points
from comet.calibrate.measurements import Measurement, Recorder, format_params, parse_params, read_measurements

__all__ = ["PART_FIELDS", "GemmFit", "Measurement", "Recorder", "TilePoint", "assemble_profile", "efficiency_model",
           "fit_gemm_model", "format_params", "parse_params", "profile_from_csv", "profile_table", "read_measurements",
           "tile_points"]
