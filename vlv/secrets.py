"""Credentials from the environment: recognise them, and keep them out of logs, MLflow and the files we write.

A value is a secret when its environment variable's name looks like a credential (GEMINI_API_KEY, HF_TOKEN,
AWS_SECRET_ACCESS_KEY, ...). Redaction replaces the value itself, wherever it appears in a message: an error
that quotes a URL with a token in it is caught as well as a config value that holds one.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Iterable

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
MIN_SECRET_CHARS = 6  # shorter values ("1", "true") would redact ordinary text
MASK = "***"


def secret_values() -> list[str]:
    """Values of environment variables whose names look like credentials (never to be logged)."""
    return [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_CHARS]


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    for value in secrets if secrets is not None else secret_values():
        text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A handler filter: the formatted message of every record passes through `redact` before it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets = secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, redact(text, self.secrets)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Put a `RedactingFilter` on every handler of `logger` (the root logger by default), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
