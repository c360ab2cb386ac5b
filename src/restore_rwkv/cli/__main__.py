import sys

from restore_rwkv.cli import main

sys.exit(main())
