"""Kernel settings read from the best input that shows them, for walks and checks alike.

A setting is unknown until an input shows it: a sysctl dump of a few keys says nothing of the keys
it leaves out, and `lsmod | grep x` says nothing of the modules it filtered away. Only a whole
`sysctl -a` (or its net.* part) shows that a key does not exist, and only a whole module list that
a module is not loaded.
"""

from __future__ import annotations

from kptrace.model.node import COMPLETE, Node


def module_loaded(node: Node, name: str) -> tuple[bool | None, str | None]:
    """(loaded?, citation): True if a module list shows it, False only if a whole list lacks it."""
    for m in node.modules or []:
        if m.name == name:
            return True, str(m.source) if m.source else None
    if node.modules is not None and node.level("modules") == COMPLETE:
        return False, None
    absent = node.modules_not_loaded.get(name)
    if absent is not None:
        return False, str(absent)  # `lsmod | grep br_netfilter` printed nothing
    return None, None


def br_netfilter(node: Node, version: int) -> tuple[bool | None, str | None, str]:
    """Whether bridged frames pass ip(6)tables: (on?, citation, how kptrace knows)."""
    key = "net.bridge.bridge-nf-call-iptables" if version == 4 else "net.bridge.bridge-nf-call-ip6tables"
    s = node.sysctls.get(key)
    if s is not None:
        return s.value.strip() == "1", str(s.source), f"{key} = {s.value.strip()}"
    loaded, cite = module_loaded(node, "br_netfilter")
    if loaded is False:
        where = f" ({cite}: the grep for it printed nothing)" if cite else ""
        return False, cite, f"br_netfilter is not in the module list{where}, so bridged frames skip iptables"
    if node.level("sysctls") == COMPLETE:
        if loaded:
            # The keys exist whenever the module is loaded: two inputs that disagree.
            return None, cite, (f"br_netfilter is loaded ({cite}) but {key} is not in the whole sysctl dump: "
                                f"the inputs disagree")
        return False, None, f"{key} is absent from the whole sysctl dump: br_netfilter is not loaded"
    if loaded:
        return None, cite, f"br_netfilter is loaded ({cite}); {key} is not in the input (the kernel's default is 1)"
    return None, None, f"neither {key} nor a whole module list is in the input"
