"""``python -m lori`` (and ``accelerate launch -m lori train ...``)."""

from .cli import main

raise SystemExit(main())
