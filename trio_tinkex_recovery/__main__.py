"""``python -m trio_tinkex_recovery``: the command line (see ``cli``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
