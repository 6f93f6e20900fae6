"""Layer 0, the core: torch-free leaves every other layer may read: model names, the layout of
a trial's files, seeds, storage (paths and URIs), provenance, layer shapes, the papers' figure
list and small text helpers. Nothing here imports another rp_tune package."""
