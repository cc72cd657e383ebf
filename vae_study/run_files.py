"""The names of a ``fit`` output folder (a run, or one member of a study) and the default
output folders, in one place.

No imports: the trainer writes these files, the study's record and the report read them.
"""

from __future__ import annotations

CHECKPOINT_DIR = "checkpoint"  # the last whole epoch's STATE_FILE (written atomically)
STATE_FILE = "state.pt"  # in a checkpoint folder: weights, optimizer, RNG, history, config
METRICS_FILE = "metrics.jsonl"  # one line per epoch trained
FINAL_FILE = "final.json"  # val/nll and the test metrics, once training has ended
CONFIG_FILE = "config.yaml"  # the resolved run configuration

RUNS_DIR = "runs"  # output.dir by default, where ``vae_study run`` puts study and run folders
REPORTS_DIR = "reports"  # report.dir by default
