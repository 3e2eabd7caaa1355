"""``python -m prunekit.cli``: the same as the ``prunekit`` command."""

from prunekit.cli.main import main

raise SystemExit(main())
