"""PyTorch datasets over manifests, trainers and evaluation (later issues)."""
