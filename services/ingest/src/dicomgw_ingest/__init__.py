"""dicomgw ingest service."""
