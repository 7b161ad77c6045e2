"""Where W&B runs go: ``WANDB_MODE`` if set, else offline without an API key or network.

Torch-free (the sweep command checks it before it creates a sweep or starts an agent).
"""

from __future__ import annotations

import netrc
import os
import socket
from collections.abc import Mapping
from urllib.parse import urlparse


def _netrc_has(host: str) -> bool:
    try:
        return netrc.netrc().authenticators(host) is not None
    except Exception:
        return False


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(mode, reason): ``WANDB_MODE`` if set; otherwise offline without an API key (env or
    ~/.netrc) or when the W&B server does not answer within 3 s; otherwise online."""
    env = os.environ if env is None else env
    mode = env.get("WANDB_MODE")
    if mode:
        return ("offline" if mode == "dryrun" else mode), "WANDB_MODE"
    url = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host = url.hostname or "api.wandb.ai"
    if not (env.get("WANDB_API_KEY") or _netrc_has(host)):
        return "offline", "no W&B API key (wandb login or WANDB_API_KEY)"
    if not _reachable(host, url.port or (443 if url.scheme == "https" else 80)):
        return "offline", f"{host} is unreachable"
    return "online", "API key found and server reachable"
