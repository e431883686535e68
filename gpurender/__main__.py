"""``python -m gpurender`` is the ``gpurender`` command."""

import sys

from gpurender.cli import main

sys.exit(main())
