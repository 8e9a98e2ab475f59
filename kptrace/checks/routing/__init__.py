"""KPT4xx: routes, the overlay, MTU and the pod bridge. (KPT3xx, IPVS and ipset, are in checks/ipvs.)"""

CHECKS = ("kpt401_default_route", "kpt402_overlay_peers", "kpt403_pod_mtu", "kpt404_hairpin")
