"""`python -m rootml ...` (what torchrun runs: torchrun --nproc_per_node=N -m rootml train ...)."""

import sys

from rootml.cli import main

if __name__ == "__main__":  # not when a spawned process (Dask, multiprocessing) imports it
    sys.exit(main())
