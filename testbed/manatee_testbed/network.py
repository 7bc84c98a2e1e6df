"""Real network partitions between 127.0.0.x "hosts", with nftables.

`partition(ip, peers)` installs one table per node (`<prefix>_127_0_0_12`) whose
output-hook chain drops, in both directions, the packets between `ip` and each peer.
On loopback every packet passes the output hook exactly once (sent by the socket that
writes it), and a dropped packet is simply lost: open connections hang and new ones
time out, as in a real partition, rather than being refused. `heal(ip)` deletes the
table and traffic flows again (TCP retransmits what was lost).

Address rules only see a node whose sockets send from its address. Sockets that are
not bound send from 127.0.0.1 on loopback, so when the node's processes live in a
cgroup (see manatee_testbed.cgroups) the table also drops what the node's processes
send to its peers (`socket cgroupv2`), and what the peers' processes (their
`peer_cgroups`) send to the node's address.

`source_nat(ip, cgroup)` goes further and makes the node's unbound sockets send from
its address (SNAT on loopback), so that peers see each node's connections coming from
the node's own address, as between real hosts.

Needs root and `nft` (package nftables). Every failure raises NftError with the
command, its exit status and stderr.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

from manatee_testbed import cgroups

DEFAULT_PREFIX = "manatee_part"
SNAT_PREFIX = "manatee_snat"
CHAIN = "out"
NFT = shutil.which("nft") or "/usr/sbin/nft"
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,40}$")


class NftError(RuntimeError):
    def __init__(self, argv: list[str], returncode: int, stderr: str, script: str | None = None):
        self.argv, self.returncode, self.stderr, self.script = argv, returncode, stderr, script
        msg = f"{' '.join(argv)} exited with status {returncode}: {stderr.strip()}"
        if script:
            msg += f"\nscript:\n{script}"
        super().__init__(msg)


def _check_ip(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    if addr.version != 4:
        raise ValueError(f"{ip}: only IPv4 addresses are supported")
    return str(addr)


def table_name(ip: str, table_prefix: str = DEFAULT_PREFIX) -> str:
    """The node's table: prefix + '_' + address with dots as underscores."""
    if not _PREFIX_RE.match(table_prefix):
        raise ValueError(f"table prefix {table_prefix!r}: letters, digits and '_' only, starting with a letter")
    return f"{table_prefix}_{_check_ip(ip).replace('.', '_')}"


def _nft(args: list[str], script: str | None = None, *, cgroup_ns: bool = False) -> str:
    argv = [NFT, *args]
    root = cgroups.cgroup2_root()
    if cgroup_ns and root is not None and root != Path("/sys/fs/cgroup"):
        # nft resolves `socket cgroupv2 "path"` under /sys/fs/cgroup only; on a hybrid
        # layout run it in a private mount namespace where the cgroup2 root is there.
        argv = ["unshare", "-m", "--", "sh", "-c",
                'mount --bind "$1" /sys/fs/cgroup && shift && exec "$@"', "sh", str(root), *argv]
    cp = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30)
    if cp.returncode != 0:
        raise NftError(argv, cp.returncode, cp.stderr, script)
    return cp.stdout


def _set(addrs: list[str]) -> str:
    return addrs[0] if len(addrs) == 1 else "{ " + ", ".join(addrs) + " }"


def rules_script(
    ip: str,
    peers: list[str],
    table_prefix: str = DEFAULT_PREFIX,
    *,
    cgroup: str | None = None,
    peer_cgroups: list[str] = (),
    verdict: str = "drop",
) -> str:
    """The nft script `partition` loads (atomically: any old table of the node is replaced);
    `verdict` for the packets between the node and its peers (a flaky network: a share dropped)."""
    ip = _check_ip(ip)
    others = sorted({_check_ip(p) for p in peers} - {ip}, key=ipaddress.ip_address)
    if not others:
        raise ValueError(f"partition of {ip}: no peer addresses to cut it from")
    name = table_name(ip, table_prefix)
    rules = [
        f"ip saddr {ip} ip daddr {_set(others)} {verdict}",
        f"ip saddr {_set(others)} ip daddr {ip} {verdict}",
    ]
    if cgroup:
        rules.append(f'socket cgroupv2 level {cgroups.level_of(cgroup)} "{cgroup.strip("/")}" '
                     f"ip daddr {_set(others)} {verdict}")
    for pc in peer_cgroups:
        rules.append(f'socket cgroupv2 level {cgroups.level_of(pc)} "{pc.strip("/")}" ip daddr {ip} {verdict}')
    body = "\n".join(f"    {r}" for r in rules)
    return (
        f"add table inet {name}\n"
        f"delete table inet {name}\n"
        f"table inet {name} {{\n"
        f"  chain {CHAIN} {{\n"
        f"    type filter hook output priority -10; policy accept;\n"
        f"{body}\n"
        f"  }}\n"
        f"}}\n"
    )


def partition(
    ip: str,
    peers: list[str],
    table_prefix: str = DEFAULT_PREFIX,
    *,
    cgroup: str | None = None,
    peer_cgroups: list[str] = (),
) -> str:
    """Cut `ip` off from every address in `peers` (both directions). Returns the table name.

    cgroup: the node's cgroup (relative to the cgroup2 root) to also cut its unbound
    sockets; peer_cgroups: the peers' groups, to cut their unbound sockets to `ip`.
    """
    script = rules_script(ip, peers, table_prefix, cgroup=cgroup, peer_cgroups=list(peer_cgroups))
    _nft(["-f", "-"], script, cgroup_ns=bool(cgroup or peer_cgroups))
    return table_name(ip, table_prefix)


def source_nat(ip: str, cgroup: str, table_prefix: str = SNAT_PREFIX) -> str:
    """Give every process of `cgroup` the source address `ip` on loopback, as on a real
    host: connections its unbound sockets open to 127.0.0.0/8 leave from `ip` instead of
    127.0.0.1 (peers' pg_hba and partition rules then see the node's address; libpq,
    for one, cannot bind a source address). Replaces an earlier table of the node."""
    ip = _check_ip(ip)
    name = table_name(ip, table_prefix)
    mark = f"0x{int(ipaddress.IPv4Address(ip)):08x}"
    grp = cgroup.strip("/")
    script = (
        f"add table inet {name}\n"
        f"delete table inet {name}\n"
        f"table inet {name} {{\n"
        f"  chain node_mark {{\n"
        f"    type filter hook output priority -150; policy accept;\n"
        f'    socket cgroupv2 level {cgroups.level_of(grp)} "{grp}" ip saddr 127.0.0.1 '
        f"ip daddr 127.0.0.0/8 meta mark set {mark}\n"
        f"  }}\n"
        f"  chain node_snat {{\n"
        f"    type nat hook postrouting priority 100; policy accept;\n"
        f"    meta mark {mark} ip saddr 127.0.0.1 snat ip to {ip}\n"
        f"  }}\n"
        f"}}\n"
    )
    _nft(["-f", "-"], script, cgroup_ns=True)
    return name


def drop_syns(src_ip: str, dst_ip: str, dst_port: int, table_prefix: str) -> str:
    """Drop every connection attempt (SYN) from `src_ip` to `dst_ip`:`dst_port`, matched as the
    packet leaves (after `source_nat`); established connections pass. Undo with `heal(src_ip,
    table_prefix)`. Returns the table name."""
    src_ip, dst_ip = _check_ip(src_ip), _check_ip(dst_ip)
    name = table_name(src_ip, table_prefix)
    _nft(["-f", "-"], f"add table inet {name}\ndelete table inet {name}\n"
         f"table inet {name} {{\n  chain out {{\n"
         f"    type filter hook postrouting priority 200; policy accept;\n"
         f"    ip saddr {src_ip} ip daddr {dst_ip} tcp dport {int(dst_port)} tcp flags & (syn|ack) == syn drop\n"
         f"  }}\n}}\n")
    return name


def remove_source_nat(ip: str, table_prefix: str = SNAT_PREFIX) -> bool:
    return heal(ip, table_prefix)


def tables(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Names of inet tables starting with `prefix` + '_'."""
    out = _nft(["list", "tables", "inet"])
    names = [line.split()[-1] for line in out.splitlines() if line.startswith("table inet ")]
    return [n for n in names if n.startswith(prefix + "_")]


def partitioned(ip: str, table_prefix: str = DEFAULT_PREFIX) -> bool:
    return table_name(ip, table_prefix) in tables(table_prefix)


def heal(ip: str, table_prefix: str = DEFAULT_PREFIX) -> bool:
    """Remove the node's partition; False if there was none."""
    name = table_name(ip, table_prefix)
    if name not in tables(table_prefix):
        return False
    _nft(["delete", "table", "inet", name])
    return True


def heal_all(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete every table named `prefix`_*; returns their names."""
    names = tables(prefix)
    for n in names:
        _nft(["delete", "table", "inet", n])
    return names
