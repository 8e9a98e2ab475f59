"""KPT0xx: the input itself (unparsable, missing) and kptrace's own failures."""

CHECKS = ("kpt001_unparsable_input", "kpt002_input_missing", "kpt003_check_crashed")
