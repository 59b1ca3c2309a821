"""The audit trail: who touched which study, when, from where, with what outcome (DICOM PS3.15 A.5).

Events are recorded off the request's hot path (``AuditTrail.record`` appends to a buffer) and written
in batches to the append-only ``audit_events`` table of the index; a failing write keeps the buffer
and retries, it does not drop events. The ordinary logs stay free of PHI; this store is the place
for study UIDs and queries, readable with ``dicomgw audit`` (dicom.admin's business).
"""

from dicomgw.audit.events import AuditEvent, to_xml
from dicomgw.audit.trail import AuditTrail

__all__ = ["AuditEvent", "AuditTrail", "to_xml"]
