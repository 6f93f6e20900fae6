"""`python -m rp_tune.report`: a sweep's report (the command of releases before the layered
packages; the code is `rp_tune.results.report`)."""

if __name__ == "__main__":
    from rp_tune.results.report import main

    raise SystemExit(main())
