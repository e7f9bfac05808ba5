"""The platform's jobs: one module per job, each with a `Payload` model and `handle(payload, ctx)`."""
