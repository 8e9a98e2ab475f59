"""KPT5xx: the host around Kubernetes (firewall daemons)."""

CHECKS = ("kpt501_host_firewall",)
