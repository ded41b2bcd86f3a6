"""The worker half: claim loop, leases, retries and the process supervisor."""
