-- Every circuit-breaker state change, in time order per model:
-- state is open | half_open | closed; open_until is when an open breaker
-- will let a probe through.
CREATE OR REPLACE VIEW breaker_transitions AS
WITH b AS (
    SELECT
        id,
        time,
        source,
        type,
        json_transform(data, '{
            "model": "VARCHAR", "reason": "VARCHAR", "failures": "INTEGER",
            "calls": "INTEGER", "open_until_ms": "BIGINT", "successes": "INTEGER"
        }') AS d
    FROM events
    WHERE type IN ('turnout.breaker.opened', 'turnout.breaker.half_opened',
                   'turnout.breaker.closed')
)
SELECT
    time,
    d.model AS model,
    CASE type
        WHEN 'turnout.breaker.opened' THEN 'open'
        WHEN 'turnout.breaker.half_opened' THEN 'half_open'
        ELSE 'closed'
    END AS state,
    d.reason AS reason,
    d.failures AS failures,
    d.calls AS calls,
    to_timestamp(d.open_until_ms / 1000) AS open_until,
    d.successes AS successes,
    source,
    id AS event_id
FROM b;
