"""Learned runtimes (issue 19): what counts as the same kind of job, the prediction
from the runs that finished before, when it is confident, and its error on history."""

from __future__ import annotations

import pytest

from scheduler.predict import RuntimeHistory, accuracy, signature


def test_the_same_kind_of_job_is_the_same_program_and_script_whatever_the_numbers() -> None:
    a = signature("", ["python", "train.py", "--seed", "3", "--lr", "0.1"])
    assert a == signature("", ["/usr/bin/python", "exp/train.py", "--seed", "4"]) == "cmd:python train.py"
    assert a != signature("", ["python", "eval.py"])
    assert signature("", ["python", "-m", "pkg.train", "--epochs", "90"]) == "cmd:python pkg.train"
    # A name, when given, says it better than the command; its numbers are left out too.
    assert signature("resnet50-run7", ["python", "train.py"]) == signature("resnet#-run#", ["sh"]) == "name:resnet#-run#"
    assert signature("", []) == ""


def test_a_prediction_is_the_median_of_runs_like_it_and_confident_only_when_they_agree() -> None:
    h = RuntimeHistory(keep=5)
    assert h.predict("alice", "cmd:train") is None  # nothing has run
    for s in (100.0, 120.0):
        h.add("alice", "cmd:train", s)
    p = h.predict("alice", "cmd:train")
    assert p is not None and p.seconds == pytest.approx(110.0) and p.runs == 2 and not p.confident
    h.add("alice", "cmd:train", 110.0)
    p = h.predict("alice", "cmd:train")
    assert p is not None and p.confident and p.high == pytest.approx(118.0)
    # Another kind of hers: her runs of any kind, never confident.
    other = h.predict("alice", "cmd:eval")
    assert other is not None and other.seconds == pytest.approx(110.0) and not other.confident
    assert h.predict("bob", "cmd:train") is None  # another researcher's runs say nothing of bob's
    # Runs that disagree (10 s and 1 h) are no basis for a backfill.
    for s in (10.0, 3600.0, 20.0):
        h.add("bob", "cmd:x", s)
    p = h.predict("bob", "cmd:x")
    assert p is not None and not p.confident
    # Only the last `keep` runs count: the job changed, the prediction follows.
    for _ in range(5):
        h.add("alice", "cmd:train", 1000.0)
    p = h.predict("alice", "cmd:train")
    assert p is not None and p.seconds == 1000.0 and p.runs == 5
    h.add("alice", "cmd:train", float("nan"))  # a bad value is not a runtime
    assert h.predict("alice", "cmd:train") == p


def test_accuracy_predicts_each_run_from_those_that_ended_before_it() -> None:
    runs = [("a", "k", 100.0), ("a", "k", 100.0), ("a", "k", 100.0), ("a", "k", 200.0), ("b", "k", 50.0)]
    acc = accuracy(runs)
    assert acc.jobs == 5 and acc.predicted == 3  # the first of each owner has nothing before it
    # Predictions 100, 100, 100 for 100, 100, 200: errors 0, 0, 100.
    assert acc.mae_s == pytest.approx(100 / 3) and acc.median_ae_s == 0.0
    assert acc.coverage == pytest.approx(2 / 3)  # 200 > the 90th percentile of three 100s
    assert acc.confident == 1 and acc.confident_coverage == 0.0
