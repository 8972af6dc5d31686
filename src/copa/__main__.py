"""``python -m copa`` is the ``copa`` command."""

import sys

from copa.cli import main

sys.exit(main())
