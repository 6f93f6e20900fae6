"""`python -m rp_tune.train`: one trial without Ray (the command of releases before the layered
packages; the code is `rp_tune.trial.cli`)."""

if __name__ == "__main__":
    from rp_tune.trial.cli import main

    raise SystemExit(main())
