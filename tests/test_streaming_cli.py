"""`emotion-monitor train streaming` forwards its options to train.streaming_train unchanged."""

from __future__ import annotations

import pytest

from emotion_monitor.cli import main


def test_train_streaming_forwards_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from train import streaming_train

    seen: list[list[str]] = []
    monkeypatch.setattr(streaming_train, "main", lambda argv: seen.append(argv) or 0)
    rc = main(["train", "streaming", "--data", "CORPUS", "-o", "RUN", "--protocols", "cv5",
               "--final", "--epochs", "3"])
    assert rc == 0
    assert seen == [["CORPUS", "--out", "RUN", "--protocols", "cv5", "--final", "--epochs", "3"]]


def test_train_streaming_defaults_stay_in_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    from train import streaming_train

    seen: list[list[str]] = []
    monkeypatch.setattr(streaming_train, "main", lambda argv: seen.append(argv) or 0)
    assert main(["train", "streaming", "--data", "C", "-o", "R"]) == 0
    assert seen == [["C", "--out", "R"]]
    # ...and the trainer's own parser accepts exactly that.
    streaming_train.build_parser().parse_args(seen[0])
