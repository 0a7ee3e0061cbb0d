"""``python -m nerbot``."""

from nerbot.cli import main

raise SystemExit(main())
