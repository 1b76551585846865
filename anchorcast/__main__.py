"""``python -m anchorcast``: the same as the ``anchorcast`` command."""

import sys

from anchorcast.cli import main

sys.exit(main())
