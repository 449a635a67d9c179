"""``python -m banditrec``: the ``banditrec`` command."""

from banditrec.cli import main

main(prog_name="banditrec")
