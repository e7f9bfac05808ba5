"""The worker side: where a job runs.

Huey wiring (huey_app, serializer), the executor (one attempt of one job, its states), retries
(backoff), leases and their heartbeat, the housekeeping every consumer does (due delays, the
reaper of dead leases, cron ticks) and the consumer process itself.
"""
