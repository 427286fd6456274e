"""``python -m clara_plugins.cli`` runs the ``clara`` command."""

import sys

from clara_plugins.cli import main

sys.exit(main())
