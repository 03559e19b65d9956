#!/usr/bin/env python3
"""Container healthcheck for ``edgeae run --serve``: asks the view server's ``/health`` and exits 0 (healthy) or
1 (unhealthy), as Docker's HEALTHCHECK expects; one line on stdout says why. Standard library only.

Environment: ``EDGEAE_HEALTH_URL`` (default ``http://127.0.0.1:8080/health``), ``EDGEAE_TOKEN`` (sent as a Bearer
token, as the view server requires on a non-loopback address), ``EDGEAE_HEALTH_GRACE`` (seconds after the start
within which no frame yet is still healthy; default 60), ``EDGEAE_HEALTH_TIMEOUT`` (seconds; default 4).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/health"


def check(url: str, token: str | None, grace_s: float, timeout_s: float) -> tuple[bool, str]:
    """(healthy, reason) for the view server at ``url``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            body = resp.read(65536)
    except urllib.error.HTTPError as e:
        return False, f"{url}: HTTP {e.code}"
    except (OSError, ValueError) as e:
        return False, f"{url}: {e}"
    try:
        health = json.loads(body)
        published = int(health["frames_published"])
        uptime = float(health["uptime_s"])
    except (ValueError, KeyError, TypeError):
        return False, f"{url}: not edgeae's /health answer"
    if not health.get("has_frame") and uptime > grace_s:
        return False, f"no frame from the source in {uptime:.0f} s"
    return True, f"ok: {published} frames in {uptime:.0f} s"


def main() -> int:
    env = os.environ
    healthy, reason = check(
        env.get("EDGEAE_HEALTH_URL") or DEFAULT_URL,
        env.get("EDGEAE_TOKEN", "").strip() or None,
        float(env.get("EDGEAE_HEALTH_GRACE") or 60),
        float(env.get("EDGEAE_HEALTH_TIMEOUT") or 4),
    )
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
