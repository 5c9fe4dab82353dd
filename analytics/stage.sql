-- Check and parse a batch of raw records (the Arrow table _records, built by
-- analytics/records.py) into _staged: the sink's fast path.
--
-- ok is true when the record is a CloudEvent as the codec
-- (service/wire/cloudevents.py: decode) reads it: specversion 1.0, JSON
-- content type (or none), non-empty UTF-8 id, type and source, an RFC 3339
-- time, a tenant (the key, else the data's "tenant"), UTF-8 JSON data. The
-- check is stricter than the codec where the two could differ (only UTC
-- times in the form the codec writes pass here, say): such records, and every
-- record refused here, go to
-- the codec in Python, which stores them or says why they are unreadable.
-- Not checked: the data against its event type's schema (stored as sent).

CREATE OR REPLACE TEMP VIEW _staged AS
WITH r AS (
    SELECT
        i,
        kafka_partition,
        kafka_offset,
        h_specversion = '1.0'::BLOB AS spec_ok,
        h_content_type = ''::BLOB
            OR lower(trim(split_part(try(decode(h_content_type)), ';', 1))) = 'application/json'
            AS content_ok,
        try(decode(h_id)) AS id,
        try(decode(h_type)) AS type,
        try(decode(h_source)) AS source,
        nullif(try(decode(h_subject)), '') AS request_id,
        try(decode(h_traceparent)) AS traceparent,
        (h_subject = ''::BLOB OR try(decode(h_subject)) IS NOT NULL)
            AND (h_traceparent = ''::BLOB OR try(decode(h_traceparent)) IS NOT NULL)
            AS optional_ok,
        try(decode(h_time)) AS time_text,
        has_key,
        try(decode(key)) AS key_text,
        try(decode(value)) AS data
    FROM _records
),
p AS (
    SELECT
        *,
        CASE WHEN regexp_full_match(time_text, '\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z')
              AND substr(time_text, 12, 2) <= '23' AND NOT starts_with(time_text, '0000')
             THEN date_trunc('millisecond', try_cast(time_text AS TIMESTAMPTZ))
        END AS time,
        CASE WHEN NOT has_key AND json_type(data, '$.tenant') = 'VARCHAR'
             THEN data ->> '$.tenant'
             WHEN has_key THEN key_text
        END AS tenant,  -- AND first: DuckDB then parses the data of keyless records only
        CASE WHEN regexp_full_match(traceparent, '[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?')
              AND NOT starts_with(traceparent, 'ff-')
              AND (NOT starts_with(traceparent, '00-') OR length(traceparent) = 55)
              AND substr(traceparent, 4, 32) <> repeat('0', 32)
             THEN substr(traceparent, 4, 32)
        END AS trace_id
    FROM r
)
SELECT
    i, id, type, time, tenant, request_id, source, trace_id, data, kafka_partition, kafka_offset,
    coalesce(spec_ok AND content_ok AND optional_ok AND id <> '' AND type <> '' AND source <> ''
             AND time IS NOT NULL AND tenant IS NOT NULL AND data IS NOT NULL, false) AS ok
FROM p;
