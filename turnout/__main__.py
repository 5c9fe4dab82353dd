"""`python -m turnout ...` is the `turnout` command."""

from turnout.service.cli import main

raise SystemExit(main())
