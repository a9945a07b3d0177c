"""What the daemon reads of a model card, whoever runs the model: the in-process file
(``streamer.model.ServedModel``) or a Ray Serve deployment (``streamer.backends.remote``).
Torch-free, so the remote side needs no torch for it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CardView:
    """``card`` and the fields read from it: class names in output order, rate and window."""

    card: dict
    classes: list[str] = field(init=False)
    sample_rate: int = field(init=False)
    window_s: float = field(init=False)
    window_samples: int = field(init=False)

    def __post_init__(self) -> None:
        self.classes = list(self.card["classes"])
        self.sample_rate = int(self.card["sample_rate"])
        self.window_s = float(self.card["window_s"])
        self.window_samples = int(round(self.sample_rate * self.window_s))
