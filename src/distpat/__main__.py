"""``python -m distpat``: the same as the ``distpat`` command."""

from distpat.cli import main

raise SystemExit(main())
