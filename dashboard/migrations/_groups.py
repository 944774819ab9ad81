"""What the `viewer` and `operator` groups may do (docs/architecture.md §4), shared by the
data migration that creates them and the post_migrate hook that restores them."""

VIEW_MODELS = [
    ("checkpoints", "source"), ("checkpoints", "thread"), ("checkpoints", "tag"),
    ("checkpoints", "checkpoint"), ("checkpoints", "blobreference"), ("checkpoints", "referenceuse"),
    ("checkpoints", "dailyusage"), ("checkpoints", "run"), ("storage", "download"),
]
OPERATOR_EXTRA = [("storage", "download_blob"), ("checkpoints", "run_maintenance")]
# Granted by 0004_manage_sources (0002 predates the permission).
OPERATOR_SOURCES = [("checkpoints", "manage_sources")]
