"""dicomgw DIMSE front door."""
