"""KPT1xx: kernel modules and sysctls (br_netfilter, forwarding, rp_filter, conntrack)."""

CHECKS = ("kpt101_br_netfilter", "kpt102_br_netfilter_ipv6", "kpt103_ip_forward", "kpt104_rp_filter",
          "kpt105_conntrack_full")
