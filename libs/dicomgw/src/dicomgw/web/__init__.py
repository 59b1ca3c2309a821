"""Starlette glue shared by the services: problem responses, CORS, media types, multipart output.

Kept apart from the pure core (dicom/, storage/, index/), which imports no web framework.
"""
