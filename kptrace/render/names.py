"""A Service port's name where kube-proxy writes it: `ns/name:port` in iptables rule comments and nft
element comments, `service-HASH-ns/name/proto/port` (and endpoint-, external-, local-, firewall-) in nft
chain names. Used where a person reads the answer: the first line of `why`, `graph`'s chain labels."""

from __future__ import annotations

import re

SVC_NAME = r"[a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*(?::[-a-zA-Z0-9]+)?"
SVC_COMMENT = re.compile(rf'(?:--comment |(?<!-m )\bcomment )"?({SVC_NAME})(?=[" ]|$)')
NFT_CHAIN = re.compile(r"\b(?:service|external|local|firewall|endpoint)-[A-Z2-7]{8}-([a-z0-9][-a-z0-9.]*)/"
                       r"([a-z0-9][-a-z0-9.]*)/[a-z]+/([-a-zA-Z0-9]*)")
BARE = re.compile(rf"^({SVC_NAME})(?=\s|$)")


def service_in(text: str) -> str | None:
    """The Service port a rule's text (or an nft chain name) names, if it names one."""
    m = SVC_COMMENT.search(text)
    if m:
        return m.group(1)
    m = NFT_CHAIN.search(text)
    if m:
        return f"{m.group(1)}/{m.group(2)}" + (f":{m.group(3)}" if m.group(3) else "")
    return None


def service_in_comment(comment: str) -> str | None:
    """`default/web:http -> 10.244.1.12:8080`, `kube-system/kube-dns:dns cluster IP` → the name."""
    m = BARE.match(comment.strip())
    return m.group(1) if m else None
