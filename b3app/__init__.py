"""The B3 platform app on b3-jobs, plugged in by the manifest's `[app]` table and the jobs' `http` keys.

The runtime knows jobs, not tickers; this package is what plugs the B3 domain (`market/`) in:
`services.py` (the factory of ctx.services), `routes.py` (assets, analyses), `triggers.py` (the
request models of the price-update triggers) and `cli.py` (`python -m runtime seed`).
"""
