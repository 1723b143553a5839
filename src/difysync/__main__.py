"""`python -m difysync` runs the same CLI as the `difysync` script."""

from .cli import entry

if __name__ == "__main__":
    entry()
