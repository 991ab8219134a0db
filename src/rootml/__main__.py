"""`python -m rootml ...` (what torchrun runs: torchrun --nproc_per_node=N -m rootml train ...)."""

import sys

from rootml.cli import main

sys.exit(main())
