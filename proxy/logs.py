"""Log context for relay and link messages: ``[relay peer=..]``, ``[link name=..]``."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class Tagged(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that puts a bracketed context before every message."""

    def __init__(self, logger: logging.Logger, tag: str) -> None:
        super().__init__(logger, {"tag": tag})
        self.tag = tag

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.tag}] {msg}", kwargs
