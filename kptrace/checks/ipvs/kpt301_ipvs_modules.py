from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.ipvs.facts import ipvs_gate
from kptrace.checks.registry import Outcome, check, fail, info, passed
from kptrace.checks.registry import missing as missing_input
from kptrace.model.finding import Severity

# kube-proxy's list before v1.27 (GetRequiredIPVSModules; nf_conntrack_ipv4 on kernels before 4.19).
SCHEDULERS = ("ip_vs_rr", "ip_vs_wrr", "ip_vs_sh")
DEFAULT_SCHEDULER = "rr"  # kube-proxy's when --ipvs-scheduler is empty
WHY = {
    "ip_vs": "without it the kernel has no IPVS: kube-proxy v1.27+ refuses IPVS mode and older ones fall back to "
             "iptables mode, so the node does not proxy Services as configured",
    "nf_conntrack": "IPVS's connection tracking (net.ipv4.vs.conntrack = 1) and kube-proxy's MASQUERADE rules need it",
}


@check(id="KPT301", name="ipvs-modules-missing", severity=Severity.HIGH,
       remediation="modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh nf_conntrack, then restart kube-proxy on the node; "
                   "make it permanent in /etc/modules-load.d/ipvs.conf (one module per line). If modprobe fails, the "
                   "kernel lacks the module: check /lib/modules/$(uname -r)/modules.builtin, install the kernel's "
                   "extra modules, or run kube-proxy in iptables mode.")
def ipvs_modules(ctx: CheckContext) -> Iterator[Outcome]:
    """IPVS mode, but ip_vs, a scheduler module (ip_vs_rr, ip_vs_wrr, ip_vs_sh) or nf_conntrack is not loaded."""
    node = ctx.node
    assert node is not None
    evidence, stop = ipvs_gate(ctx, {"modules.txt": node.modules is not None})
    if stop is not None:
        yield stop
        return
    assert evidence is not None and node.modules is not None
    mode, where = evidence
    loaded = {m.name: m for m in node.modules}
    services = node.ipvs or []
    used: dict[str, int] = {}  # scheduler module -> virtual services using it
    for vs in services:
        if vs.scheduler:
            used[f"ip_vs_{vs.scheduler}"] = used.get(f"ip_vs_{vs.scheduler}", 0) + 1
    wanted = ["ip_vs", *SCHEDULERS, *sorted(set(used) - set(SCHEDULERS)), "nf_conntrack"]
    # Built in: not in /proc/modules, yet the kernel shows it has it.
    builtin: dict[str, str] = {}
    vs_keys = sorted(k for k in node.sysctls if k.startswith("net.ipv4.vs."))
    if services:
        builtin["ip_vs"] = "ipvsadm lists virtual services"
    elif vs_keys:
        builtin["ip_vs"] = f"{vs_keys[0]} exists"
    for module, n in used.items():
        builtin[module] = f"{n} virtual service(s) use the {module.removeprefix('ip_vs_')} scheduler"
    ct_keys = sorted(k for k in node.sysctls if k.startswith("net.netfilter.nf_conntrack_"))
    if ct_keys:
        builtin["nf_conntrack"] = f"{ct_keys[0]} exists"
    elif node.conntrack:
        builtin["nf_conntrack"] = "the conntrack table has entries"
    absent = [m for m in wanted if m not in loaded]
    needed = {"ip_vs", "nf_conntrack", *used} | (set() if used else {f"ip_vs_{DEFAULT_SCHEDULER}"})
    missing_needed = [m for m in absent if m in needed and m not in builtin]
    unused = [m for m in absent if m not in needed and m not in builtin]
    older = (f"kube-proxy before v1.27 refuses IPVS mode at start without all of {', '.join(SCHEDULERS)} and falls "
             f"back to iptables mode")
    if (missing_needed or unused) and node.level("modules") != "complete":
        # `lsmod | grep ip_vs` shows what is loaded, not what is not.
        yield missing_input("modules.txt", why=f"the module list is an excerpt: {', '.join(missing_needed or unused)} "
                                         f"may be loaded but not shown")
        return
    if missing_needed:
        # A scheduler in use is never missing (its services prove it is there): only the default one can be.
        why = "; ".join(f"{m}: " + WHY.get(m, f"the {DEFAULT_SCHEDULER} scheduler kube-proxy uses by default (no virtual "
                                              f"service is listed to show another), without which it cannot create "
                                              f"virtual services") for m in missing_needed)
        also = f" ({', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not loaded either: {older})" if unused else ""
        yield fail(f"IPVS mode ({mode}), but {', '.join(missing_needed)} {'is' if len(missing_needed) == 1 else 'are'} "
                   f"not in modules.txt (/proc/modules): {why}{also}. A module built into the kernel is not in "
                   f"/proc/modules either: if /lib/modules/$(uname -r)/modules.builtin lists it, it is there and this "
                   f"finding is wrong", where)
    elif unused:
        yield info(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not loaded (or built in): no virtual "
                   f"service uses {'it' if len(unused) == 1 else 'them'}, and the kernel loads a scheduler when a "
                   f"service first asks for it, but {older}: load them if this kube-proxy is older", where)
    if not missing_needed and not unused:
        have = [m for m in wanted if m in loaded]
        parts = [f"{', '.join(have)} {'is' if len(have) == 1 else 'are'} loaded"] if have else []
        parts += [f"{m} is built in ({builtin[m]})" for m in absent]
        yield passed(f"IPVS mode ({mode}): {'; '.join(parts)}", *(loaded[m].source for m in have))
