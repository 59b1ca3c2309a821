"""Clean Pixel Data (DICOM PS3.15 option 113101): burned-in text found, redacted and proven gone.

``clean_pixels(ds)`` looks at an image that may carry burned-in text (BurnedInAnnotation YES, or not
said on ultrasound, secondary capture, XA, RF, endoscopy, CR/DX... see ``candidate``), finds text with
OCR (RapidOCR's PP-OCR models on onnxruntime, CPU only) and with per-device region rules
(``regions.json``, versioned), fills it with the image's own background, encodes the pixels again in
kind (native, lossless or lossy as the original was), and runs a residual OCR pass at other settings on
the result as a reader decodes it. Only an image in which that pass reads nothing is ``clean``; the
others are ``excluded`` with the reason. See ``clean.py`` for the steps, ``codecs.py`` for what is
decoded and how it is encoded again.
"""

from dicomgw.deid.pixels.clean import (
    CLEAN_PIXEL_DATA,
    CleanResult,
    candidate,
    clean_pixels,
    finder_reader,
    proof_reader,
)
from dicomgw.deid.pixels.codecs import PixelDataError
from dicomgw.deid.pixels.ocr import (
    Box,
    Inverted,
    LeastChannel,
    RapidOcr,
    Readers,
    Tesseract,
    TextReader,
    Turned,
    Word,
    text_like,
)
from dicomgw.deid.pixels.regions import Device, RegionRule, RegionRules, shipped

__all__ = [
    "CLEAN_PIXEL_DATA", "Box", "CleanResult", "Device", "Inverted", "LeastChannel", "PixelDataError",
    "RapidOcr", "Readers", "RegionRule", "RegionRules", "Tesseract", "TextReader", "Turned", "Word",
    "candidate", "clean_pixels", "finder_reader", "proof_reader", "shipped", "text_like",
]
