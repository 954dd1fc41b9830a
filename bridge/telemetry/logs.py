"""Log lines as text or as JSON lines (`--log-format json`), for every bridge process.

A JSON line holds the time, level, logger and the formatted message, plus `message_id` and
`reason` when the call passed them in `extra`. Log calls in bridge never format content or
anything a caller sent, so neither form carries it; exceptions are reduced to their type.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Final, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging"]

LOG_FORMATS: Final = ("text", "json")
_TEXT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_EXTRA_FIELDS: Final = ("message_id", "reason", "agency", "component")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; keys `time`, `level`, `logger`, `message` and known extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _EXTRA_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str | int):
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: an exception's text may quote what a caller sent.
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send the root logger's records to `stream` (stderr) as text or JSON lines."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
