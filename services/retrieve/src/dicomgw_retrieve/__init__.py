"""dicomgw retrieve service."""
