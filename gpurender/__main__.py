"""``python -m gpurender`` is the ``gpurender`` command."""

import sys

from gpurender.cli import main

if __name__ == "__main__":
    sys.exit(main())
