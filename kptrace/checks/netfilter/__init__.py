"""KPT2xx: netfilter rules (policies, shadowing rules, kube-proxy's chains, backends, DNAT targets)."""

CHECKS = ("kpt201_forward_policy_drop", "kpt202_iptables_backends", "kpt203_drop_before_kube", "kpt204_no_endpoints",
          "kpt205_no_local_endpoints", "kpt206_kube_jumps", "kpt207_dnat_unreachable", "kpt208_dnat_unknown_node",
          "kpt209_iptables_version")
