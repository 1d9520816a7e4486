"""`python -m neurocodec` runs the `neurocodec` command."""

import sys

from neurocodec.cli import main

sys.exit(main())
