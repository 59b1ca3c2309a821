"""dicomgw worker service."""
