"""dicomgw shared core: DICOM parsing, storage, index, multipart, errors."""
