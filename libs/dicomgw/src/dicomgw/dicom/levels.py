"""Which attributes belong to the patient/study level and which to the series level (PS3.4 C.6.2)."""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword


def _tags(*keywords: str) -> frozenset[int]:
    out = set()
    for kw in keywords:
        tag = tag_for_keyword(kw)
        if tag is None:  # pragma: no cover - a typo in the tables below
            raise KeyError(kw)
        out.add(int(tag))
    return frozenset(out)


STUDY_LEVEL_TAGS = _tags(
    # Patient module
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "OtherPatientIDsSequence",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientComments", "EthnicGroup",
    "OtherPatientNames", "PatientSpeciesDescription", "PatientBreedDescription",
    "ResponsiblePerson", "ResponsibleOrganization", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    # General Study / Patient Study modules
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "ProcedureCodeSequence",
    "ReferencedStudySequence", "RequestingServiceCodeSequence", "AdmittingDiagnosesDescription",
    "PatientAge", "PatientSize", "PatientWeight", "Occupation", "AdditionalPatientHistory",
    "PregnancyStatus", "SmokingStatus", "PatientSexNeutered",
)

SERIES_LEVEL_TAGS = _tags(
    "Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate", "SeriesTime",
    "PerformingPhysicianName", "ProtocolName", "SeriesDescription", "SeriesDescriptionCodeSequence",
    "OperatorsName", "BodyPartExamined", "PatientPosition", "AnatomicalOrientationType",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription",
    "RequestAttributesSequence", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Manufacturer", "InstitutionName", "StationName", "ManufacturerModelName",
    "InstitutionalDepartmentName", "SoftwareVersions",
)

# Always present in a study-level JSON object even though they live in the instance
SPECIFIC_CHARACTER_SET = 0x00080005

# The instance-level attributes QIDO-RS returns by default (PS3.18 Table 10.6.3-5) and matches on;
# kept per instance as a few hundred bytes of DICOM JSON, so that an instance search reads those
# rather than decoding every instance's whole metadata
INSTANCE_QIDO_TAGS = _tags(
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "TimezoneOffsetFromUTC",
    "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames", "ContentDate",
    "ContentTime",
)
