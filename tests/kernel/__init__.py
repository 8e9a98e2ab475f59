"""Kernel lab tests: real netfilter in network namespaces judges kptrace."""
