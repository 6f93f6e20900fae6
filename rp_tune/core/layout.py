"""The names of a trial's files: what a checkpoint folder holds (written by
rp_tune.trial.checkpoints, read by the sweep's resume and by trackers); no torch, so trackers
and reports need none.

    checkpoints/epoch_NNNN/state.pt              what resuming needs (checkpoints.read_checkpoint)
    checkpoints/epoch_NNNN/artifacts/            what trackers log, in open formats:
        masks.parquet, density_report.csv, history.json, grad_flow.csv, [final_weights.pt]
        [imp_masks/round_NN.parquet, imp_rounds.csv]   iterative magnitude pruning: the mask
                                                 each round trained, and the rounds' records

A trial group's checkpoint (rp_tune.trial.fused, in a sweep) holds one such folder per member:

    <group checkpoint>/members/<run key>/state.pt, artifacts/...
    <group checkpoint>/failed.json               members stopped (diverged): run key -> why
"""

CHECKPOINT_FILE = "state.pt"
ARTIFACTS_DIR = "artifacts"
MASKS_FILE = "masks.parquet"
DENSITY_REPORT_FILE = "density_report.csv"
HISTORY_FILE = "history.json"
GRAD_FLOW_FILE = "grad_flow.csv"
WEIGHTS_FILE = "final_weights.pt"
IMP_MASKS_DIR = "imp_masks"
IMP_ROUNDS_FILE = "imp_rounds.csv"
GRANET_UPDATES_FILE = "granet_updates.csv"  # GraNet: step, density after every mask update
# what checkpoints of releases before the artifacts folder kept at their top
LEGACY_ARTIFACTS = (MASKS_FILE, HISTORY_FILE, GRAD_FLOW_FILE)

MEMBERS_DIR = "members"
FAILED_MEMBERS_FILE = "failed.json"
GROUP_FILE = "group.json"  # in a member's trial folder of the sweep: its group's folder name
GROUP_PREFIX = "group-"  # run keys of the Tune trials that train groups
