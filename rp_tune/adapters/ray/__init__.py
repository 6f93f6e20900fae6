"""Ray Tune and Ray Train: the sweep driver, the trainable, the worker loops, the callbacks."""
