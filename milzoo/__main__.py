"""``python -m milzoo`` (also what ``torchrun -m milzoo`` runs)."""

import sys

from milzoo.cli import main

sys.exit(main())
