"""LaViA Live: real-time task guidance from live video.

The package holds the live assistant and the train/serve contract in
:mod:`lavia_live.contract`, which the offline ``training`` package imports.
"""

__version__ = "0.1.0"
