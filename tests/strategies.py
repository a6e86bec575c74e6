"""Hypothesis strategies for what users type, shared by the fuzz tests.
LABQ_FUZZ_SCALE=N multiplies every test's number of cases."""

from __future__ import annotations

import os

from hypothesis import strategies as st

SCALE = float(os.environ.get("LABQ_FUZZ_SCALE", "1"))


def n(examples: int) -> int:
    return max(1, int(examples * SCALE))


SPEC_KEYS = [
    "command", "gpus", "cpus", "memory", "time", "workdir", "env", "name", "priority", "grace",
    "after", "after_any", "array", "sweep", "max_running", "notify",
]
weird_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300
) | st.sampled_from(
    ["", " ", "\x00", "../../etc/passwd", "-1", "1e309", "NaN", "4h", "16G", "x" * 70000,
     "0-99%8", "0-4294967295", "1,3,5-9:2", "%", "{index}", "42.*", "42.7", "http://127.0.0.1/x"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | weird_text
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(weird_text, inner, max_size=5),
    max_leaves=20,
)
specs = st.dictionaries(st.sampled_from(SPEC_KEYS) | weird_text, values, max_size=8)
