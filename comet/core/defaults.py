"""The defaults that depend on the context, each chosen here once.

SIM_HARDWARE: the hardware a simulation runs on unless told otherwise (the paper's evaluation GPU, so that
the simulator's default output compares with the paper). GPU_HARDWARE: the profile a plan built for the real
kernels records (the GPU this project's kernels are measured on); the kernels themselves never read it.
"""

SIM_HARDWARE = "h800"
GPU_HARDWARE = "h200"
