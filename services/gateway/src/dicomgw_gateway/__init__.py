"""dicomgw gateway service."""
