"""Background jobs: work no request waits for, done by one replica at a time.

`leases.py` holds the one lease primitive (a row per job in `leases`), `sweep.py` the
health sweep of active installs, `retention.py` the pruning of old audit rows and events.
Each job is started and stopped by `service/services.py` `running()`; idle, a job costs
one lease write and one small query per tick.
"""
