"""myproj: the five-minute tour's application (contracts, worker, a Python submitter)."""
