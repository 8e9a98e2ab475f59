# kptrace for Kubernetes nodes: the image docs/kptrace-daemonset.yaml runs (`kptrace collect` on every
# node, see docs/daemonset.md). It holds the tools `kptrace collect` runs; run it with hostNetwork
# and NET_ADMIN + NET_RAW, nothing else.
#
#   docker build -t registry.example.com/kptrace:0.1.0 .
#
# Not built by kptrace's own CI (it needs a container engine).

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kptrace ./kptrace
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# iptables brings both backends (iptables-nft-save and iptables-legacy-save, libiptc for python-iptables);
# nftables, ipset, ipvsadm and conntrack answer for nf_tables, ipsets, IPVS and conntrack;
# iproute2 for ip and bridge.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 iptables nftables ipset ipvsadm conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# The `live` extra (pyroute2, python-iptables) is only a fallback for missing tools: all are installed
# above, so it is left out.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Root in the container, for NET_ADMIN/NET_RAW to apply; the DaemonSet drops every other capability.
USER 0
WORKDIR /var/lib/kptrace
ENTRYPOINT ["kptrace"]
CMD ["collect", "--help"]
