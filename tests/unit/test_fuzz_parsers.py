"""Fuzzing the parsers of what users type, alone and fast: the job-spec validation every
submission goes through, and the job-file reader. Every refusal is one line.
LABQ_FUZZ_SCALE=N multiplies the cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scheduler.job import JobSpec, first_error
from scheduler.jobfile import JobFileError, load_job_file
from tests.strategies import SPEC_KEYS, n, scalars, specs, weird_text


# LABQ_FUZZ_SCALE=10 for a long run; these counts keep the suite's time.
@settings(max_examples=n(400), deadline=None)
@given(spec=specs)
def test_job_spec_validation_fuzz(spec: dict[str, Any]) -> None:
    """The validation every submission goes through, alone and fast, many times over."""
    try:
        JobSpec.model_validate(spec)
    except ValidationError as e:
        field, msg = first_error(e)
        text = f"{field}: {msg}" if field else msg
        assert text and "\n" not in text and "Traceback" not in text, text


yaml_docs = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(SPEC_KEYS) | weird_text, inner, max_size=6)
    ),
    max_leaves=15,
)


@settings(max_examples=n(600), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(weird_text, yaml_docs.map(lambda d: json.dumps(d, allow_nan=True))))
def test_job_file_parser_fuzz(tmp_path: Path, text: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        data, lines = load_job_file(path)
        assert isinstance(data, dict) and isinstance(lines, dict)
    except JobFileError as e:
        assert str(e) and "\n" not in str(e).strip(), str(e)
