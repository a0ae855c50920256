"""Peak resident memory of the running process (light: imports no model code)."""

from __future__ import annotations

import resource
import sys

__all__ = ["peak_rss_mib"]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    On Linux the high-water mark of ``/proc/self/status`` (``VmHWM``), which starts afresh at ``exec``:
    ``ru_maxrss`` of a child started by fork + exec keeps the parent's peak. Elsewhere ``ru_maxrss``
    (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
