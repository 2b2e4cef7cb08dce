"""``python -m eval.cli ...``: the ``dim-ssl`` command line without the installed script."""

import sys

from eval.cli import main

sys.exit(main())
