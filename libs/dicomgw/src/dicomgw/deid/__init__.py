"""De-identification of DICOM instances for research collections (DICOM PS3.15 Annex E).

Default deny: an instance keeps only the attributes listed in ``RETAINED`` (what viewing and image
analysis need, none of them in Table E.1-1's Basic Profile), the options' attributes when an option is
chosen, and the few it rewrites (UIDs, patient and study identifiers, dates). Everything else goes,
private tags and overlays included, whatever the file holds: an attribute nobody thought of cannot
leak. The test walks the standard's own Table E.1-1 (as published in the dicom-standard package) over
real-world files, nested sequences included.

Pseudonyms are keyed: HMAC-SHA256 under the collection's secret, so the same patient, study or UID maps
to the same pseudonym in every export of that collection, and to nothing without the key. UIDs become
``2.25.<128-bit integer>`` (PS3.5 B.2).
"""

from dicomgw.deid.profile import (
    BURNED_IN_MODALITIES,
    Options,
    burned_in_candidate,
    deidentify,
)

__all__ = ["BURNED_IN_MODALITIES", "Options", "burned_in_candidate", "deidentify"]
