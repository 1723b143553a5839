"""`python -m difysync` runs the same CLI as the `difysync` script."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="difysync")
