"""``python -m tomsparse.cli``: the same as the ``tomsparse`` command."""

import sys

from tomsparse.cli.main import main

sys.exit(main())
