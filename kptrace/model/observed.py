"""What a node's logs and small files showed that is not rules, routes or links: kernel TRACE lines, kernel
messages, single /proc and /sys values, resolv.conf, and the Kubernetes Node objects `kubectl get node` printed.

These are observations, each with the line it was read from; walkers and checks may use them as evidence
("the kernel said the conntrack table was full"), never as a rule set to walk.
"""

from __future__ import annotations

from kptrace.model._compiled import dataclass
from kptrace.model.source import Source


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One step of a packet the kernel traced (`iptables -t raw … -j TRACE`).

    From the kernel log (`TRACE: nat:KUBE-SERVICES:rule:25 IN=eth0 OUT= SRC=… DST=…`) or from
    `xtables-monitor --trace` (` TRACE: 2 5a1e9b34 nat:KUBE-SERVICES:rule:0x1c:JUMP:KUBE-SVC-X -4 -t nat -A …`).
    """

    table: str
    chain: str
    kind: str  # "rule", "return" or "policy"
    source: Source
    number: int | None = None  # the kernel log's rule position (1-based) or policy/return number
    handle: int | None = None  # xtables-monitor: the nf_tables rule handle
    verdict: str | None = None  # xtables-monitor: ACCEPT DROP CONTINUE JUMP:CHAIN GOTO:CHAIN RETURN …
    rule_text: str | None = None  # xtables-monitor prints the rule (`-4 -t nat -A PREROUTING …`)
    trace_id: str | None = None  # xtables-monitor: the id shared by one packet's events
    family: int | None = None  # 4 or 6 when the line says (xtables-monitor's nfproto, the address)
    # The packet as the line printed it (IN, OUT, MAC, SRC, DST, PROTO, SPT, DPT, MARK, …), in order.
    packet: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        for k, v in self.packet:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True)
class KernelMessage:
    """A kernel log line kptrace knows the meaning of, or one it keeps as text (kind "other")."""

    kind: str  # "conntrack-full", "ipvs-no-destination", "other"
    text: str  # the message, without the log's time and host prefix
    source: Source
    time: str | None = None  # the prefix as printed: `[Tue Nov 20 22:30:22 2018]`, `[79049.987562]`, `Jan 18 14:57:18`


@dataclass(frozen=True, slots=True)
class SysValue:
    """A value read from a file under /proc or /sys (`cat /proc/sys/net/ipv4/ip_forward`, a brport's hairpin_mode).

    `path` may hold a shell glob (`/sys/devices/virtual/net/cni0/brif/*/hairpin_mode`) when the paste printed
    values without saying which file each came from.
    """

    path: str
    value: str
    source: Source

    @property
    def sysctl_key(self) -> str | None:
        """`net.ipv4.conf.flannel/1.rp_filter` for /proc/sys/net/ipv4/conf/flannel.1/rp_filter (sysctl's spelling)."""
        if not self.path.startswith("/proc/sys/") or "*" in self.path or "?" in self.path:
            return None
        return ".".join(p.replace(".", "/") for p in self.path[len("/proc/sys/"):].split("/") if p)


@dataclass(frozen=True, slots=True)
class ResolvConf:
    """/etc/resolv.conf: whose it is (the node's, or a pod's read with `kubectl exec`) and what it says."""

    nameservers: tuple[str, ...]
    search: tuple[str, ...]
    options: tuple[str, ...]
    source: Source
    whose: str | None = None  # None: not said (the node's, when read on the node); "pod busybox", …
    path: str | None = None  # the file it is: /etc/resolv.conf, /run/systemd/resolve/resolv.conf; None: not said
    # The line each nameserver was read from (parallel to `nameservers`), and the search/domain line in effect.
    nameserver_sources: tuple[Source, ...] = ()
    search_source: Source | None = None
    options_sources: tuple[Source, ...] = ()


@dataclass(frozen=True, slots=True)
class KubeletDNS:
    """What kubelet's config file (`resolvConf:`, `clusterDNS:`, `clusterDomain:`) or its command line
    (`--resolv-conf`, `--cluster-dns`, `--cluster-domain`) says about the DNS it gives pods.

    None: not said by this input (kubelet's default then applies: resolvConf /etc/resolv.conf)."""

    resolv_conf: tuple[str, Source] | None = None  # "" turns the host file off (kubelet: no DNS inherited)
    cluster_dns: tuple[tuple[str, Source], ...] = ()
    cluster_domain: tuple[str, Source] | None = None
    config_path: tuple[str, Source] | None = None  # the command line's --config FILE
    origin: str = "config"  # "config": a KubeletConfiguration file; "flags": kubelet's command line
    source: Source | None = None  # the input's first line: cited for what the file says by leaving a key out


@dataclass(frozen=True, slots=True)
class KubeNode:
    """What `kubectl get node -o yaml|json` showed of one Node: its name, addresses, pod CIDRs and
    flannel's annotations (the VTEP MAC and underlay address other nodes use to reach its pods)."""

    name: str
    source: Source
    addresses: tuple[tuple[str, str], ...] = ()  # (type, address): ("InternalIP", "192.168.56.12"), …
    pod_cidrs: tuple[str, ...] = ()
    flannel_backend_type: str | None = None  # flannel.alpha.coreos.com/backend-type: vxlan
    flannel_vtep_mac: str | None = None  # flannel.alpha.coreos.com/backend-data: {"VtepMAC": "…"}
    flannel_public_ip: str | None = None  # flannel.alpha.coreos.com/public-ip
