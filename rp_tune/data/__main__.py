"""`python -m rp_tune.data`: prepare, check or list the data sets."""

from rp_tune.data import main

raise SystemExit(main())
