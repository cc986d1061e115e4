"""A device profile drafted from an agent's hardware report (``edgeprune profiles new --from-remote``).

What the device told about itself (cores, clocks, ISA flags, memory, caches) is ``detected`` and says it came from
the agent; peak work per cycle is ``derived`` from the ISA as for the host; what a hardware report cannot show —
the clock under minutes of load — is ``assumed``, with a source saying so, for the user to replace or calibrate
(``edgeprune calibrate PROFILE --remote URL``). Memory bandwidth is left out rather than invented: predictions then
scale it from this host and widen their band.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from edgeprune.devices import Cluster, Cpu, DeviceProfile, Memory, Quantity, Runtime
from edgeprune.errors import ProfileError, RemoteError


def draft_profile(report: dict[str, Any], url: str, name: str | None = None) -> DeviceProfile:
    """The device behind ``report`` (``GET /hardware`` of the agent at ``url``) as a profile named ``name`` (default:
    from its CPU name)."""
    try:
        return _draft(report, url, name)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            raise ProfileError(f"the agent at {url} reported hardware that makes no valid profile "
                               f"({'.'.join(map(str, first['loc']))}: {first['msg']})",
                               "write the profile by hand (edgeprune profiles show rpi5 for the format)") from None
        raise RemoteError(f"the agent at {url} sent a hardware report this edgeprune cannot read",
                          "install the same edgeprune version on the device and here") from None


def _draft(report: dict[str, Any], url: str, name: str | None) -> DeviceProfile:
    host = report["profile"]
    base = host["cpu"]["clusters"][0]
    told = f"reported by the edgeprune agent at {url}"

    def detected(figure: dict[str, Any]) -> Quantity:
        """A figure of the host profile as the device detected it; its source now says where it came from."""
        source = str(figure["source"]).replace("this machine", "the device")
        return Quantity(value=figure["value"], unit=figure["unit"], kind=figure["kind"], source=f"{source}; {told}")

    def assumed_sustained(clock: Quantity) -> Quantity:
        return Quantity(value=clock.value, unit=clock.unit, kind="assumed",
                        source="assumed equal to the max clock: a hardware report cannot show the clock under "
                               "minutes of load; measure it on the device, or calibrate the profile")

    groups = [g for g in report.get("clusters", []) if g["cpus"]]
    groups = groups if len(groups) > 1 else [None]  # one cluster: detect_host's own figures
    fastest = max(range(len(groups)), key=lambda i: groups[i]["max_clock_ghz"] if groups[i] else 0.0)
    caches = report.get("caches", {})
    clusters = []
    for i, group in enumerate(groups):
        if group is None:
            count, clock, core = detected(base["count"]), detected(base["max_clock"]), base["core"]
        else:
            count = Quantity(value=len(group["cpus"]), unit="cores", kind="detected",
                             source=f"cores {group['cpus'][0]}-{group['cpus'][-1]} share one max clock; {told}")
            clock = Quantity(value=group["max_clock_ghz"], unit="GHz", kind="detected",
                             source=f"cpufreq cpuinfo_max_freq; {told}")
            core = f"CPU part {group['part']}" if group.get("part") else f"{base['core']} ({clock.value:g} GHz cores)"
        l2 = Quantity(value=caches["l2"], unit="KiB", kind="detected", source=f"sysfs cache/index*/size; {told}") \
            if caches.get("l2") and i == fastest else None  # the report reads the caches of the fastest cores
        clusters.append(Cluster(core=core, count=count, max_clock=clock, sustained_clock=assumed_sustained(clock),
                                isa=list(base["isa"]), fp32_flops_per_cycle=Quantity(**base["fp32_flops_per_cycle"]),
                                int8_ops_per_cycle=Quantity(**base["int8_ops_per_cycle"]), l2_cache=l2))
    cpu_name = host["cpu"]["name"]
    cpu = Cpu(name=cpu_name, arch=host["cpu"]["arch"], clusters=clusters,
              l3_cache=Quantity(value=caches["l3"], unit="KiB", kind="detected",
                                source=f"sysfs cache/index*/size; {told}") if caches.get("l3") else None)
    memory = Memory(capacity=detected(host["memory"]["capacity"]))
    platform = report.get("host", {}).get("platform", "unknown platform")
    return DeviceProfile(
        name=name or _slug(cpu_name), cpu=cpu, memory=memory,
        description=f"Drafted by edgeprune profiles new from the agent at {url} ({platform}). Review it: figures "
                    "marked assumed are placeholders; calibrate it against the device (edgeprune calibrate --remote).",
        runtime=Runtime(threads=int(clusters[fastest].count.value), cluster=fastest))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "remote-device"
