"""``python -m milzoo`` (also what ``torchrun -m milzoo`` runs)."""

import sys

from milzoo.cli._app import main

sys.exit(main())
