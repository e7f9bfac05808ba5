"""The web side: the aiohttp app a web process serves.

The app factory and its middlewares, the HTTP API and its models, the OpenAPI document,
the dashboard (page and its API), and Prometheus metrics. The `/ws` relay lives in `bus/`.
"""
