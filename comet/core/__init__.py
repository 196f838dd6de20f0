"""The base floor: model shapes, parallelism and hardware profiles (config), routing, token ownership, the
Policy, the Plan and its planner, the expert weights and the slow reference. Torch only: nothing here imports
sim/ or kernels/ (tests/test_layout.py checks it). docs/ARCHITECTURE.md shows the floors."""
