"""The profile itself: what is kept, what is rewritten, and how (see the package docstring)."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

# Attributes needed to display and analyse the pixels, none of which Table E.1-1 lists.
RETAINED = frozenset({
    "SpecificCharacterSet", "SOPClassUID", "ImageType", "Modality",
    # image pixel module
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PlanarConfiguration", "PixelAspectRatio", "PixelData",
    "FloatPixelData", "DoubleFloatPixelData", "PixelPaddingValue", "PixelPaddingRangeLimit",
    "NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    "BurnedInAnnotation", "RecognizableVisualFeatures",
    # geometry
    "PixelSpacing", "ImagerPixelSpacing", "SliceThickness", "SpacingBetweenSlices",
    "ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "PatientPosition",
    # value transforms
    "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth",
    "VOILUTFunction", "PresentationLUTShape",
    # anatomy: a defined term (CS), not in Table E.1-1; what an AI data set is selected by
    "BodyPartExamined",
    # ordering within the (pseudonymous) study
    "SeriesNumber", "InstanceNumber", "AcquisitionNumber", "TemporalPositionIndex",
    # acquisition parameters an AI pipeline uses
    "KVP", "ConvolutionKernel", "MagneticFieldStrength", "RepetitionTime", "EchoTime",
    "InversionTime", "FlipAngle", "EchoTrainLength", "ScanningSequence", "SequenceVariant",
    "MRAcquisitionType", "ImagingFrequency", "EchoNumbers",
})
# Enhanced objects (multi-frame CT, MR, PET...) keep each frame's geometry and value transform in
# functional group macros (PS3.3 C.7.6.16): the macros needed to place and read the frames, and in each
# only these attributes (none is in Table E.1-1). Every other macro (frame dates and times, comments,
# referenced and derivation images, anatomy, private groups) is removed, as at the top level.
FUNCTIONAL_GROUPS = {
    "PixelMeasuresSequence": frozenset({"PixelSpacing", "SliceThickness", "SpacingBetweenSlices"}),
    "PlanePositionSequence": frozenset({"ImagePositionPatient"}),
    "PlaneOrientationSequence": frozenset({"ImageOrientationPatient"}),
    "PixelValueTransformationSequence": frozenset({"RescaleIntercept", "RescaleSlope", "RescaleType"}),
    "FrameVOILUTSequence": frozenset({"WindowCenter", "WindowWidth", "VOILUTFunction"}),
    "FrameContentSequence": frozenset({"StackID", "InStackPositionNumber", "TemporalPositionIndex",
                                       "FrameAcquisitionNumber", "DimensionIndexValues"}),
}
FUNCTIONAL_GROUP_SEQUENCES = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
# Retain Patient Characteristics Option (PS3.15 E.3.6)
PATIENT_CHARACTERISTICS = frozenset({"PatientSex", "PatientAge", "PatientSize", "PatientWeight",
                                     "EthnicGroup", "PregnancyStatus", "SmokingStatus"})
# Retain Device Identity Option (PS3.15 E.3.7)
DEVICE_IDENTITY = frozenset({"Manufacturer", "ManufacturerModelName", "DeviceSerialNumber",
                             "StationName", "SoftwareVersions", "DetectorID"})
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
# modalities whose images often carry burned-in text when BurnedInAnnotation does not say otherwise
BURNED_IN_MODALITIES = frozenset({"US", "XA", "RF", "ES", "SC", "OT", "DOC", "ECG"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
# PS3.16 CID 7050: De-identification Method codes
METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "device_identity": ("113109", "Retain Device Identity Option"),
    "longitudinal_modified_dates": ("113107",
                                    "Retain Longitudinal Temporal Information Modified Dates Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
}
# Clean Descriptors Option (PS3.15 E.3.5): the descriptions a research team selects and trains on
DESCRIPTORS = ("StudyDescription", "SeriesDescription", "ProtocolName")
# whose values, in the original, identify somebody: a descriptor naming any of them is removed
IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
               "StudyID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
               "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
               "NameOfPhysiciansReadingStudy", "RequestingPhysician", "InstitutionName",
               "InstitutionalDepartmentName", "StationName", "PatientAddress", "MilitaryRank",
               "OtherPatientNames", "PatientMotherBirthName", "ResponsiblePerson")
# what looks like a date, a time, a number long enough to be an identifier, or an e-mail address
_SUSPICIOUS = re.compile(r"\d{4,}|\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|\d{1,2}:\d{2}|@")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Options:
    patient_characteristics: bool = False
    device_identity: bool = False
    # dates shifted by a keyed, per-patient number of days (intervals within a patient kept)
    longitudinal_modified_dates: bool = False
    # study and series descriptions and protocol names kept where they name nobody (else removed)
    clean_descriptors: bool = False
    # burned-in text found in the pixels and redacted (dicomgw.deid.pixels); the code 113101 is added
    # by the cleaning to the instances it cleaned, not by the profile to every instance
    clean_pixels: bool = False

    def chosen(self) -> list[str]:
        return ["basic", *(name for name in ("patient_characteristics", "device_identity",
                                             "longitudinal_modified_dates", "clean_descriptors")
                           if getattr(self, name))]


def _identifying_words(ds: Dataset) -> set[str]:
    """Every word (2+ letters or digits) of the original's identifying attributes, lower-case."""
    words: set[str] = set()
    for keyword in IDENTIFYING:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        for v in (value if isinstance(value, MultiValue | list | tuple) else [value]):
            words |= {w for w in _WORD.findall(str(v).lower().replace("^", " ")) if len(w) >= 2}
    return words


def clean_descriptor(value: str, identifying: set[str]) -> str | None:
    """The descriptor if it names nobody, else None (removed, never partly redacted).

    Removed when it holds a word of the original's identifying attributes (names, IDs, dates,
    institution, station...), or anything that looks like a date, a time, a long number or an
    e-mail address: a description is free text, and what cannot be shown clean is not kept.
    """
    text = " ".join(str(value).split())
    if not text or not text.isprintable() or _SUSPICIOUS.search(text):
        return None
    if set(_WORD.findall(text.lower())) & identifying:
        return None
    return text


def _digest(key: bytes, kind: str, value: str) -> bytes:
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()


def pseudonymous_uid(key: bytes, uid: str) -> str:
    return f"2.25.{int.from_bytes(_digest(key, 'uid', uid)[:16], 'big')}"


def pseudonym(key: bytes, kind: str, value: str) -> str:
    return _digest(key, kind, value).hex()[:16].upper()


def _shift(key: bytes, patient: str, value: str) -> str:
    """A DA value moved by a keyed 0-3649 days back, the same for every date of one patient."""
    try:
        day = date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except (ValueError, IndexError):
        return ""
    days = int.from_bytes(_digest(key, "date-shift", patient)[:4], "big") % 3650
    return (day - timedelta(days=days)).strftime("%Y%m%d")


def burned_in_candidate(ds: Dataset) -> bool:
    """Whether the pixels may show burned-in text (and the instance is to be left out unless checked):
    BurnedInAnnotation YES, or not said on a modality or SOP class that often has it."""
    said = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if said:
        return said != "NO"
    return (str(ds.get("Modality", "")).upper() in BURNED_IN_MODALITIES
            or str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX))


def _functional_groups(items: Sequence) -> Sequence:
    """The functional group items with only the macros and attributes of ``FUNCTIONAL_GROUPS``."""
    out = Sequence()
    for item in items:
        kept = Dataset()
        for macro, allowed in FUNCTIONAL_GROUPS.items():
            value = item.get(macro)
            if not value:
                continue
            inner = Sequence()
            for macro_item in value:
                filtered = Dataset()
                for element in macro_item:
                    if element.keyword in allowed and not element.tag.is_private:
                        filtered.add(element)
                inner.append(filtered)
            setattr(kept, macro, inner)
        out.append(kept)
    return out


def deidentify(ds: Dataset, key: bytes, options: Options = Options()) -> Dataset:
    """A new de-identified dataset (``ds`` is left as it was), with its own file meta information."""
    keep = set(RETAINED)
    if options.patient_characteristics:
        keep |= PATIENT_CHARACTERISTICS
    if options.device_identity:
        keep |= DEVICE_IDENTITY
    out = Dataset()
    for element in ds:
        if element.keyword in keep and not element.tag.is_private:
            out.add(element)
    for keyword in FUNCTIONAL_GROUP_SEQUENCES:
        if ds.get(keyword):
            setattr(out, keyword, _functional_groups(ds[keyword].value))
    patient = str(ds.get("PatientID", "")) or str(ds.get("PatientName", ""))
    for keyword in UIDS:
        value = ds.get(keyword)
        if value:
            setattr(out, keyword, pseudonymous_uid(key, str(value)))
    # Type 2 identifiers of the patient and study: replaced by pseudonyms (stable per collection)
    out.PatientID = f"P-{pseudonym(key, 'patient', patient)}" if patient else ""
    out.PatientName = out.PatientID
    out.StudyID = f"S-{pseudonym(key, 'study', str(ds.get('StudyInstanceUID', '')))}"[:16]
    out.AccessionNumber = ""
    out.ReferringPhysicianName = ""
    out.PatientBirthDate = ""
    out.StudyTime = out.SeriesTime = ""
    for keyword in DATES:
        if keyword in ds or keyword == "StudyDate":
            original = str(ds.get(keyword, "") or "")
            value = _shift(key, patient, original) if options.longitudinal_modified_dates and original else ""
            setattr(out, keyword, value)
    if not options.patient_characteristics:
        out.PatientSex = ""
    if options.clean_descriptors:
        identifying = _identifying_words(ds)
        for keyword in DESCRIPTORS:
            cleaned = clean_descriptor(str(ds.get(keyword, "") or ""), identifying)
            if cleaned:
                setattr(out, keyword, cleaned)
    out.PatientIdentityRemoved = "YES"
    chosen = options.chosen()
    # LO, 64 characters a value: one value per profile and option
    out.DeidentificationMethod = ["dicomgw default-deny", *(METHOD_CODES[c][1][:64] for c in chosen)]
    codes = Sequence()
    for name in chosen:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = METHOD_CODES[name]
        item.CodingSchemeDesignator = "DCM"
        codes.append(item)
    out.DeidentificationMethodCodeSequence = codes
    if options.longitudinal_modified_dates:
        out.LongitudinalTemporalInformationModified = "MODIFIED"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out.file_meta = meta
    out.preamble = b"\0" * 128
    return out
