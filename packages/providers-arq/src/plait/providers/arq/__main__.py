"""``python -m plait.providers.arq worker module:attr``: the same as the ``plait`` command."""

import sys

from plait.providers.arq._cli import main

sys.exit(main())
