"""Plots of a training run: the loss curve, written beside the metrics."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt


def write_loss_curve(history: list[dict[str, float]], path: Path) -> None:
    """Training loss per logged step, and validation loss where measured, as a PNG."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        if train:
            ax.plot(*zip(*train, strict=True), label="train loss", color="#1f77b4")
        if val:
            ax.plot(*zip(*val, strict=True), "o", label="validation loss", color="#d62728")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (answer tokens)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
