"""`python -m difysync.emulator`: run the emulator in the foreground."""

from .server import main

main()
