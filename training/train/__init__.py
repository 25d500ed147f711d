"""`lavia train`: video instruction tuning with accelerate (LoRA, QLoRA or full)."""
