"""Read the running node, read-only, into the same text dumps a bundle holds (docs/collect.md).

Only this package touches the live system. It runs the commands docs/bundle.md lists (argument
lists, never a shell, each with a timeout) and reads /proc directly; pyroute2 and python-iptables
are optional fallbacks, imported only when a command is missing. Nothing here writes to the
kernel: no save/restore, flush, zero, insert or netlink new/set/del request, and no /proc/sys
write (tests/collect/test_read_only.py greps for them). The texts go through kptrace.load, so a
live node and its bundle are one parse path.
"""
