"""Kernel lab: network namespaces shaped like a Kubernetes node, used as the judge for kptrace."""
