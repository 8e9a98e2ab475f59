"""kptrace: follow a hypothetical packet through a Kubernetes node's netfilter state."""

__version__ = "0.1.0"
