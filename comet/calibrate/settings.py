"""What a calibration run sweeps: the points of each part, for a full run and for `--quick`."""

# --- part a, tiles (comet/calibrate/gpu.py): uniform grouped-GEMM problems per tile shape (BM, BN) and reduction K
TILE_SHAPES = ((64, 128), (128, 128), (128, 256))
TILE_KS = (512, 1024, 2048, 4096, 8192, 14336)
QUICK_TILE_SHAPES = ((64, 128), (128, 256))
QUICK_TILE_KS = (512, 2048, 8192)
TILE_COL_BLOCKS = 12  # column blocks of the uniform problem (132 = 11 x 12: whole waves at any row count)
TILE_TARGET_FLOPS = 2e11  # per problem: ~0.3 ms at 600 TFLOP/s, so the kernel's start and tail are ~1%
QUICK_TILE_TARGET_FLOPS = 5e10
# layer0 tiles (gathered A rows + gelu) against plain ones of the same shape
GEMM0_SHAPES = ((128, 128), (128, 256))
GEMM0_KS = (2048, 4096)  # layer0 reduces over the hidden size N

# --- part d, comm (comet/calibrate/comm.py): communication programs n_c of the fused kernels
COMM_NCS = (1, 2, 4, 8, 16, 32)
QUICK_COMM_NCS = (1, 8, 32)
# layer1 communication-program configs (PIPELINE, SEND_BLOCK): item by item (0) and software-pipelined (1)
L1_COMM_CONFIGS = ((0, 16), (0, 64), (1, 32))
L1_DEFAULT_CONFIG = (1, 32)  # kernels.options.GPU_COMM on a GPU: pipelined, 32 sends per step
L1_ITEM_ROWS_SHORT = 16  # sends per chunk of the short items of the fixed-cost fit (the Plan's default: 64)

# --- part e, link (comet/calibrate/comm.py): programs copying to one peer (and the SM count, to all peers)
LINK_PROGRAMS = (1, 2, 4, 8, 16, 32, 64)  # plus the SM count
QUICK_LINK_PROGRAMS = (1, 8)
