"""The event bus: one envelope, a Kombu topic exchange, and the websocket relay."""
