"""`python -m is4`: the `is4` command line."""

from is4.cli import app

app(prog_name="is4")
