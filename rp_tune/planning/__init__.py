"""Layer 7, planning a sweep without Ray: expand and check a search space, estimate its cost,
the sweep's stored records, reuse and resume, the summary and the progress line."""
