"""The job store: where a job is queued, leased, limited and recorded.

`base` is the contract every backend keeps; `sqlite` and `redis` implement it (Redis with its
Lua scripts in `lua/`). One contract test suite runs on both.
"""
