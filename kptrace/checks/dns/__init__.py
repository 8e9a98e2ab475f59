"""KPT6xx: DNS on the node: the resolv.conf kubelet gives CoreDNS and `dnsPolicy: Default` pods, and its limits."""

CHECKS = ("kpt601_upstream_loopback", "kpt602_resolv_conf_limits", "kpt603_kubelet_resolv_conf_stub")
