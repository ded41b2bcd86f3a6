"""myproj: the Flask example (contracts, worker, and a Flask web app that enqueues)."""
