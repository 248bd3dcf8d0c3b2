"""`bpftools watch`: the always-on detector and flight recorder.

One program set loaded once (``detectors``), a bounded ring per detector (``ring``), triggers and their
rate limit (``triggers``), evidence bundles written atomically and rotated under a size cap
(``bundles``), what a killed run leaves (``leftovers``), the bundle's report (``report``), the Prometheus
metrics (``metrics``) and the live loop tying them together (``loop``).
"""
