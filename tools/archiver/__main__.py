"""``python -m modelserve_archiver``."""
import sys

from .cli import main

sys.exit(main())
