"""`python -m csm_router.cli`, as the installed `csm-router` command."""

from csm_router.cli.main import main

raise SystemExit(main())
