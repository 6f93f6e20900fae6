"""MLflow: the sweep's tracker (parent and child runs, exactly-once epochs), its saved view."""
