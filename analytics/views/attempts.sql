-- One row per upstream attempt (request_id, attempt): model, provider, timing, result.
-- provider is NULL for events written without [providers] (the [upstream] provider).
-- outcome is succeeded | failed | in_flight. The failure flags record the
-- classification the router applied (retryable, counted by the breaker,
-- led to a fallback). Scans attempt events: filter on started_at.
CREATE OR REPLACE VIEW attempts AS
WITH a AS (
    SELECT
        request_id,
        tenant,
        type,
        time,
        json_transform(data, '{
            "model": "VARCHAR", "attempt": "INTEGER", "model_attempt": "INTEGER",
            "status": "INTEGER", "latency_ms": "DOUBLE", "error_class": "VARCHAR",
            "message": "VARCHAR", "retryable": "BOOLEAN", "breaker_failure": "BOOLEAN",
            "fallback": "BOOLEAN", "retry_after_ms": "BIGINT", "cost_micros": "BIGINT",
            "generation_id": "VARCHAR", "provider": "VARCHAR",
            "usage": {"prompt_tokens": "BIGINT", "completion_tokens": "BIGINT",
                      "total_tokens": "BIGINT"}
        }') AS d
    FROM events
    WHERE type IN ('turnout.attempt.started', 'turnout.attempt.succeeded',
                   'turnout.attempt.failed')
)
SELECT
    request_id,
    d.attempt AS attempt,
    any_value(tenant) AS tenant,
    any_value(d.model) AS model,
    any_value(d.model_attempt) AS model_attempt,
    coalesce(any_value(d.provider), 'upstream') AS provider,
    min(time) FILTER (WHERE type = 'turnout.attempt.started') AS started_at,
    min(time) FILTER (WHERE type <> 'turnout.attempt.started') AS finished_at,
    CASE
        WHEN bool_or(type = 'turnout.attempt.succeeded') THEN 'succeeded'
        WHEN bool_or(type = 'turnout.attempt.failed') THEN 'failed'
        ELSE 'in_flight'
    END AS outcome,
    any_value(d.status) AS status,
    any_value(d.latency_ms) AS latency_ms,
    any_value(d.error_class) AS error_class,
    any_value(d.message) AS message,
    any_value(d.retryable) AS retryable,
    any_value(d.breaker_failure) AS breaker_failure,
    any_value(d.fallback) AS fallback,
    any_value(d.retry_after_ms) AS retry_after_ms,
    any_value(d.usage.total_tokens) AS total_tokens,
    any_value(d.cost_micros) AS cost_micros,
    any_value(d.cost_micros) / 1e6 AS cost_usd,
    any_value(d.generation_id) AS generation_id
FROM a
GROUP BY request_id, d.attempt;
