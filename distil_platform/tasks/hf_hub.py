"""Is the Hugging Face hub usable for a task's ``data.hf`` dataset: not offline (``HF_HUB_OFFLINE``) and
reachable, probed once per process and endpoint by a TCP connect to ``HF_ENDPOINT`` (or the proxy a
request would go through), ~2 s at most, so an unreachable hub costs one quick probe per process.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from distil_platform.tasks.spec import HFSource


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_available(hf: HFSource) -> bool:
    """A local dataset path always works; a hub dataset only when the hub is not offline and answers
    :func:`probe_hub` (probed once per process)."""
    if Path(hf.path).exists():
        return True
    return not hub_offline() and probe_hub().reachable


def hub_unavailable_reason() -> str:
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    probe = probe_hub()
    return f"the hub at {probe.endpoint} is unreachable ({probe.detail}; probed once, {probe.seconds:.1f} s)"


@dataclass(frozen=True)
class HubProbe:
    endpoint: str
    # host:port actually connected to (the endpoint, or the proxy requests would use).
    target: str
    reachable: bool
    detail: str
    seconds: float


HUB_PROBE_TIMEOUT_S = 2.0
_HUB_PROBES: dict[str, HubProbe] = {}
_PROBE_LOCK = threading.Lock()


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _probe_target(endpoint: str) -> tuple[str, int]:
    """Host and port a request to ``endpoint`` connects to first: its proxy when one applies."""
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    proxy = urllib.request.getproxies().get(parts.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxy_parts.hostname:
            return proxy_parts.hostname, proxy_parts.port or (443 if proxy_parts.scheme == "https" else 80)
    return host, parts.port or (80 if parts.scheme == "http" else 443)


def probe_hub(timeout: float = HUB_PROBE_TIMEOUT_S) -> HubProbe:
    """Can a TCP connection to the hub endpoint (``HF_ENDPOINT``, or its proxy) be opened within
    ``timeout`` seconds? One attempt per endpoint per process; the answer is cached."""
    endpoint = hub_endpoint()
    with _PROBE_LOCK:
        cached = _HUB_PROBES.get(endpoint)
        if cached is not None:
            return cached
        host, port = _probe_target(endpoint)
        outcome: dict[str, str] = {}

        def attempt() -> None:  # in a thread: name resolution has no timeout of its own
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                outcome["ok"] = "reachable"
            except OSError as exc:
                outcome["error"] = f"{type(exc).__name__}: {exc}"

        start = time.monotonic()
        worker = threading.Thread(target=attempt, name="hf-hub-probe", daemon=True)
        worker.start()
        worker.join(timeout + 0.5)
        seconds = time.monotonic() - start
        if "ok" in outcome:
            probe = HubProbe(endpoint, f"{host}:{port}", True, "reachable", seconds)
        else:
            detail = outcome.get("error") or f"no answer within {timeout:g} s"
            probe = HubProbe(endpoint, f"{host}:{port}", False, f"{host}:{port}: {detail}", seconds)
        _HUB_PROBES[endpoint] = probe
        return probe
