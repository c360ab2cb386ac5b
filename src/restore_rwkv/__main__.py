"""``python -m restore_rwkv ...`` (and ``torchrun -m restore_rwkv train ...``): the command line."""

import sys

from restore_rwkv.cli import main

sys.exit(main())
