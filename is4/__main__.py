"""`python -m is4`: the `is4` command line."""

from is4.cli import app

if __name__ == "__main__":  # not when imported (e.g. by pkgutil.walk_packages)
    app(prog_name="is4")
