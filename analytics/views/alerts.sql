-- Every alert event: state is fired | resolved. An episode is the rows that
-- share (rule, labels, fired_at); an alert is firing while its latest row
-- for (rule, labels) has state fired.
CREATE OR REPLACE VIEW alerts AS
WITH a AS (
    SELECT
        id,
        time,
        source,
        type,
        data -> '$.labels' AS labels,
        json_transform(data, '{
            "rule": "VARCHAR", "severity": "VARCHAR", "value": "DOUBLE", "op": "VARCHAR",
            "threshold": "DOUBLE", "pending_since_ms": "BIGINT", "fired_at_ms": "BIGINT"
        }') AS d
    FROM events
    WHERE type IN ('turnout.alert.fired', 'turnout.alert.resolved')
)
SELECT
    time,
    CASE type WHEN 'turnout.alert.fired' THEN 'fired' ELSE 'resolved' END AS state,
    d.rule AS rule,
    d.severity AS severity,
    coalesce(labels, '{}'::JSON) AS labels,
    d.value AS value,
    d.op AS op,
    d.threshold AS threshold,
    to_timestamp(d.pending_since_ms / 1000) AS pending_since,
    CASE type
        WHEN 'turnout.alert.fired' THEN time
        ELSE to_timestamp(d.fired_at_ms / 1000)
    END AS fired_at,
    source,
    id AS event_id
FROM a;
