"""kubelet's DNS settings from its config file and its command line; the command line wins."""

from __future__ import annotations

import pytest

from kptrace.errors import ParseError
from kptrace.parsers.kubelet import (effective, is_kubelet_cmdline, is_kubelet_config, parse_kubelet_cmdline,
                                     parse_kubelet_config)

CONFIG = """apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
resolvConf: /run/systemd/resolve/resolv.conf
"""


def test_config_file_keys_with_their_lines() -> None:
    k = parse_kubelet_config(CONFIG, "kubelet-config.yaml")
    assert is_kubelet_config(CONFIG)
    assert k.resolv_conf is not None and k.resolv_conf[0] == "/run/systemd/resolve/resolv.conf"
    assert k.resolv_conf[1].line == 9
    assert [(ip, s.line, s.col) for ip, s in k.cluster_dns] == [("10.96.0.10", 7, 3)]
    assert k.cluster_domain is not None and k.cluster_domain[0] == "cluster.local" and k.origin == "config"


def test_flow_list_and_json() -> None:
    k = parse_kubelet_config('{"kind": "KubeletConfiguration", "clusterDNS": ["10.0.0.10", "fd00::a"]}', "c.json")
    assert [ip for ip, _ in k.cluster_dns] == ["10.0.0.10", "fd00::a"] and k.resolv_conf is None


def test_config_errors_are_located() -> None:
    with pytest.raises(ParseError) as e:
        parse_kubelet_config("kind: KubeletConfiguration\nclusterDNS: 10.96.0.10\n", "k.yaml")
    assert (e.value.line, e.value.col) == (2, 13) and "list" in e.value.message
    with pytest.raises(ParseError) as e:
        parse_kubelet_config("kind: KubeletConfiguration\nresolvConf: [a\n", "k.yaml")
    assert e.value.file == "k.yaml" and e.value.line >= 2


@pytest.mark.parametrize("text", [
    "/usr/bin/kubelet\n--config=/var/lib/kubelet/config.yaml\n--resolv-conf\n/etc/resolv.conf\n",
    "/usr/bin/kubelet\0--config=/var/lib/kubelet/config.yaml\0--resolv-conf\0/etc/resolv.conf\0",
    "/usr/bin/kubelet --config=/var/lib/kubelet/config.yaml --resolv-conf=/etc/resolv.conf",
])
def test_command_line_forms(text: str) -> None:
    assert is_kubelet_cmdline(text)
    k = parse_kubelet_cmdline(text, "kubelet-cmdline.txt")
    assert k.resolv_conf is not None and k.resolv_conf[0] == "/etc/resolv.conf"
    assert k.config_path is not None and k.config_path[0] == "/var/lib/kubelet/config.yaml"
    assert k.origin == "flags"


def test_flag_overrides_config_whatever_the_order() -> None:
    cfg = parse_kubelet_config(CONFIG, "kubelet-config.yaml")
    flags = parse_kubelet_cmdline("kubelet --resolv-conf=/etc/resolv.conf --cluster-dns=10.0.0.2,fd00::2", "cmd")
    for order in ([cfg, flags], [flags, cfg]):
        k = effective(order)
        assert k.resolv_conf is not None and k.resolv_conf[0] == "/etc/resolv.conf"
        assert [ip for ip, _ in k.cluster_dns] == ["10.0.0.2", "fd00::2"]
        assert k.cluster_domain is not None and k.cluster_domain[0] == "cluster.local"  # only the config says it
