"""The names of a trial's files: what a checkpoint folder holds (written by rp_tune.train,
read by the sweep's resume and by trackers); no torch, so trackers and reports need none.

    checkpoints/epoch_NNNN/state.pt              what resuming needs (read by train.read_checkpoint)
    checkpoints/epoch_NNNN/artifacts/            what trackers log, in open formats:
        masks.parquet, density_report.csv, history.json, grad_flow.csv, [final_weights.pt]
"""

CHECKPOINT_FILE = "state.pt"
ARTIFACTS_DIR = "artifacts"
MASKS_FILE = "masks.parquet"
DENSITY_REPORT_FILE = "density_report.csv"
HISTORY_FILE = "history.json"
GRAD_FLOW_FILE = "grad_flow.csv"
WEIGHTS_FILE = "final_weights.pt"
# what checkpoints of releases before the artifacts folder kept at their top
LEGACY_ARTIFACTS = (MASKS_FILE, HISTORY_FILE, GRAD_FLOW_FILE)
