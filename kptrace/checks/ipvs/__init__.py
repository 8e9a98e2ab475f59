"""KPT3xx: kube-proxy's IPVS mode (kernel modules, kube-ipvs0, virtual services and real servers, ipsets)."""

CHECKS = ("kpt301_ipvs_modules", "kpt302_vip_not_on_kube_ipvs0", "kpt303_ipset_cluster_ip", "kpt304_no_real_server",
          "kpt305_kube_ipvs0_node_address")
