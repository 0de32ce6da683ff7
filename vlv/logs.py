"""One logging setup for every process the pipeline starts: driver, Ray step tasks, Ray Train workers."""

from __future__ import annotations

import logging

from vlv.secrets import install_log_redaction

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY_LOGGERS = ("alembic", "mlflow", "urllib3", "filelock", "httpx")


def configure_logging(fmt: str = LOG_FORMAT, *, force: bool = False) -> None:
    """INFO to stderr, libraries' chatter at WARNING, and credentials redacted from every line."""
    logging.basicConfig(level=logging.INFO, format=fmt, force=force)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_redaction()
