"""Layer 6, one trial start to finish, without Ray or MLflow: set-up, the training loop,
evaluation, checkpoints, the metric registry, and trial groups trained as one fused model."""
