"""`python -m rp_tune.data`: prepare, check or list the data sets."""

from rp_tune.data.prepare import main

raise SystemExit(main())
