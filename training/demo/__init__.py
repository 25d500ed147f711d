"""Procedural demo task: rendered videos with narration and per-frame ground truth."""
