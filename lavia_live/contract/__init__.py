"""The train/serve contract.

One module owns each part, and both the live server and the offline pipeline import it:

- :mod:`.sampling`  which frames to keep (live by timestamp, offline by index)
- :mod:`.frames`    how a kept frame becomes a model image (resize, orientation, JPEG)
- :mod:`.clip`      the 15-frame clip and the bounded rolling buffer
- :mod:`.tasks`     task context and the task library in ``data/tasks``
- :mod:`.prompt`    the one prompt builder
- :mod:`.guidance`  the guidance answer format and its tolerant parser
- :mod:`.records`   the instruction record (LLaVA/ShareGPT-compatible JSON/JSONL)
"""
