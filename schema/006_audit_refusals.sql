-- 006_audit_refusals.sql -- refused requests (401, 403, 429) in the audit
-- trail are trimmed under their own cap, before the trail's overall one, so
-- that a long attack cannot push the record of real changes out
-- (docs/security.md); this index lets the trim find them without a scan.
CREATE INDEX audit_refusals ON audit (id) WHERE status IN (401, 403, 429);
