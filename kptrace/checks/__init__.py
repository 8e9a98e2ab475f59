"""Checks: small functions that read a node's bundle and report FAIL, WARN, INFO or PASS (`kptrace check`).

`registry.py` holds the `@check` decorator, `run.py` runs every check, `inputs.py` is what they
read. One module per check in `<group>/kptNNN_<slug>.py`, listed in its group's `CHECKS`; one page
per check in `docs/checks/KPTNNN.md` (copied to `checks/docs/` so `kptrace explain` works from a
wheel). docs/checks/index.md, "Adding a check", lists the steps.
"""
