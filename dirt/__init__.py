"""dirt: a CouchDB-backed test farm."""

__version__ = "0.1.0"
