import os
import tempfile

# Tests never touch the network: Hub access is tested at its boundary.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Nor a developer's own alert URL (tuneplan/services/notify.py): no user config in tests.
os.environ["TUNEPLAN_CONFIG"] = os.devnull
# Nor a developer's own runs: a plan weighs the newest bake-off found under the runs root
# (tuneplan/services/compare.py), so the suite starts from an empty one of its own.
os.environ["TUNEPLAN_RUNS_DIR"] = tempfile.mkdtemp(prefix="tuneplan-test-runs-")
# Output is wrapped to COLUMNS when it is set (tuneplan/commands/terminal.py), and pytest-xdist's
# workers start with COLUMNS=80: the tests that check wrapping set the width themselves.
os.environ.pop("COLUMNS", None)
