"""The core: what a job is and how one is asked for.

manifest (schedules.toml → frozen models), cron expressions, the job record and its states,
enqueue (validate a payload, build the record and message), settings from the environment,
the errors, the event sink interface, and the context a handler receives.
"""
