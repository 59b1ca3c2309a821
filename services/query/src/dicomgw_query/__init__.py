"""dicomgw query service."""
