"""Layer 7, planning a sweep without Ray: `space` (a search space expanded into checked trial
configs), `estimate` (device-hours before it runs), `capacity` (devices, GPU shares, trials at
once), `records` (the only code that reads or writes a sweep's files), `plan` (which trials
to train, reuse or keep; resume checks; the driver's lock; the outcome and summary) and
`progress` (the console's line and `--status`)."""
