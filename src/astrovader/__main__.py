"""``python -m astrovader`` is the same as the ``astrovader`` command."""

import sys

from astrovader.cli import main

sys.exit(main())
