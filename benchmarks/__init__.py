"""dirt's benchmark harness: `bin/bench` (see README.md)."""
