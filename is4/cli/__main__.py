"""`python -m is4.cli` (what `torchrun -m is4.cli train …` runs)."""

from is4.cli import app

if __name__ == "__main__":
    app()
