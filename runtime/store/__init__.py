"""The job store: where a job is queued, leased, limited and recorded.

`base` is the contract every backend keeps; `sqlite` and `redis` implement it. Redis's state
changes are the Lua scripts in `lua/` (loaded and called by `scripts`), its key names are in
`keys`. One contract test suite runs on both.
"""
