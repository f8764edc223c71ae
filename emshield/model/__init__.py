"""Model handling: safe loading, LoRA training, decoupling, merge and recovery."""
