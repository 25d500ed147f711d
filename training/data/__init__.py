"""Dataset build: transcribe narrated videos, cut clips, annotate them, write records."""
