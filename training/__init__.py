"""Offline LaViA pipeline: dataset build, fine-tuning and evaluation.

Imports the train/serve contract from :mod:`lavia_live.contract`; never the reverse.
"""
