"""myproj: the FastAPI example (contracts, worker, and a FastAPI app with its own route)."""
