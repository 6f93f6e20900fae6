"""Layer 9, results: the report (tables over seeds), grouping, the papers' figures and numbers,
and evaluating finished trials again. Reads a sweep's files through planning; logs to MLflow
through the adapter."""
