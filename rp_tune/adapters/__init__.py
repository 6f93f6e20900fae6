"""Layer 8, the adapters to the systems a sweep runs on: `ray` (the driver, Tune's trainable and
callbacks, Ray Train's worker loop) and `mlflow` (the durable tracker, the saved comparison
view, the trial's curves). The only code that imports ray or mlflow."""
