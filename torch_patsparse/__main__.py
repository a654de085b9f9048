"""``python -m torch_patsparse``: the main job (see :mod:`torch_patsparse.cli`)."""
import sys

from .cli import main

sys.exit(main())
