"""The B3 platform app on b3-jobs: its HTTP routes, its services factory and its commands.

The runtime knows jobs, not tickers; this package is what plugs the B3 domain (`market/`) in.
"""
