"""``python -m training.train`` = ``lavia train``, for ``accelerate launch -m training.train``."""

import sys

from lavia_live.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
