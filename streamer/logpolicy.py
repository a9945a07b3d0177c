"""Which broadcast messages go into the session log (``--log-explanations-every``,
``--max-session-mb``).

Explanation frames are ~95 % of a log's bytes (~19 KB each, one per voiced window with Grad-CAM
on), so on a call floor they are what has to give: only every N-th explanation of a stream is
logged, and once the log has reached its size cap none are, with one ``error`` of code
``log_truncated`` written (to the log only) when the first is left out. Everything else
(``hello``, predictions, stream events, status, errors) is always logged, also past the cap:
a prediction is never dropped, so the cap bounds the explanations, not the file.
"""

from __future__ import annotations

from streamer import protocol


class LogPolicy:
    """Decides per message what to append; keeps one explanation counter per running stream."""

    def __init__(self, explain_every: int = 10, max_bytes: int | None = None) -> None:
        if explain_every < 0:
            raise ValueError("explain_every must be >= 0 (0 = never log explanations)")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive (None = no cap)")
        self.explain_every = explain_every
        self.max_bytes = max_bytes
        self.truncated = False
        self.skipped_explanations = 0
        self._seen: dict[str, int] = {}  # stream -> explanations seen so far

    def lines(self, msg: dict, text: str, logged_bytes: int) -> list[str]:
        """The lines to append for ``msg`` (its wire ``text``), given the log's size so far."""
        kind = msg.get("type")
        if kind == "stream_ended":
            self._seen.pop(str(msg.get("stream")), None)
        if kind != "explanation":
            return [text]
        stream = str(msg.get("stream"))
        n = self._seen.get(stream, 0)
        self._seen[stream] = n + 1
        if self.explain_every == 0 or n % self.explain_every:
            self.skipped_explanations += 1
            return []
        if self.max_bytes is not None and logged_bytes + len(text) + 1 > self.max_bytes:
            self.skipped_explanations += 1
            if self.truncated:
                return []
            self.truncated = True
            return [protocol.encode(protocol.error(
                "log_truncated", f"the session log reached its cap of {self.max_bytes} bytes: "
                "explanation frames are no longer logged from here on (predictions and "
                "every other message still are)"))]
        return [text]
