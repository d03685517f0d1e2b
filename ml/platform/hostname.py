"""Airflow's `[core] hostname_callable` in services mode: tells workers on one host apart."""

from __future__ import annotations

import os
import socket


def task_hostname() -> str:
    """The name the launcher gave this worker (VISIONLOOP_TASK_HOSTNAME), else the host's FQDN."""
    return os.environ.get("VISIONLOOP_TASK_HOSTNAME") or socket.getfqdn()
