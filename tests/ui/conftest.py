"""UI tests run in UTC so the clock texts in the snapshots are the same everywhere."""

from __future__ import annotations

import os
import time

os.environ["TZ"] = "UTC"
time.tzset()
