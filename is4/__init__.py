"""IS4 builder: the reproducible pipeline behind the IS4 benchmark."""

__version__ = "0.1.0"
