"""Host, address and `listen` patterns, defined once: the API validates with them and every proxy renderer
checks again with them (pure, no I/O)."""

from __future__ import annotations

import ipaddress
import re

#: A DNS hostname: dot-separated labels of letters, digits and inner '-', at most 253 characters.
HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
#: `port`, `ipv4:port` or `[ipv6]:port` (an IPv6 address may end in dotted IPv4, e.g. `[::ffff:1.2.3.4]`).
LISTEN = re.compile(r"(?:(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):)?(\d{1,5})")
#: An HTTP header name canaryd writes into proxy configuration.
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


def parse_listen(value: str) -> tuple[str | None, int]:
    """(address or None, port) of a `listen` value: `port`, `ipv4:port` or `[ipv6]:port`. The address comes
    back normalised (IPv6 without brackets). Raises ValueError for anything else."""
    m = LISTEN.fullmatch(value)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise ValueError(f"listen {value[:80]!r} must be 'port', 'ipv4:port' or '[ipv6]:port'")
    host = m.group(1)
    if host is None:
        return None, int(m.group(2))
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"listen {value[:80]!r} has an invalid address") from None
    if (ip.version == 6) != host.startswith("["):
        raise ValueError(f"listen {value[:80]!r}: an IPv6 address goes in brackets, an IPv4 one does not")
    return str(ip), int(m.group(2))


def normalise_host(value: str) -> str:
    """A hostname (lower-cased) or an IP address (canonical form, IPv6 without brackets). Raises ValueError."""
    try:
        return str(ipaddress.ip_address(value.strip("[]") if value.startswith("[") else value))
    except ValueError:
        pass
    if not HOSTNAME.fullmatch(value):
        raise ValueError(f"host {value[:80]!r} is not a valid hostname or IP address")
    return value.lower()


def format_address(host: str, port: int) -> str:
    """`host:port` as proxies write and log it (IPv6 in brackets). Raises ValueError if either is invalid."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer between 1 and 65535, got {port!r}")
    normal = normalise_host(host)
    return f"[{normal}]:{port}" if ":" in normal else f"{normal}:{port}"


def address_variants(address: str) -> tuple[str, ...]:
    """The spellings of one `host:port` a caller may know: `[::1]:80` is also `::1:80`, and back."""
    if address.startswith("["):
        host, _, port = address[1:].rpartition("]:")
        return address, f"{host}:{port}"
    if address.count(":") > 1:
        host, _, port = address.rpartition(":")
        return address, f"[{host}]:{port}"
    return (address,)
