-- Fold the events of sink batches ($lo, $hi] into request_facts (one row per request),
-- then recompute the requests_per_minute rows of every minute those requests touch.
--
-- Statements run in order, in one transaction (analytics/archive.py: Archive.derive).
-- Every merge is idempotent (first value wins, min, max, OR, set union), so
-- folding an event twice -- a redelivery, a rerun after a crash -- changes
-- nothing, and folding in several steps equals folding at once. A dead-lettered
-- record without a request id counts as a request keyed by its event id.
-- (Delete + insert instead of INSERT ... ON CONFLICT DO UPDATE: DuckDB runs
-- the latter as a MERGE that is several times slower on a large table.)

CREATE OR REPLACE TEMP TABLE _delta AS
WITH e AS (
    SELECT
        coalesce(request_id, id) AS rid,
        type,
        time,
        tenant,
        json_transform(data, '{
            "task_type": "VARCHAR", "model": "VARCHAR", "attempt": "INTEGER",
            "attempts": "INTEGER", "cached": "BOOLEAN", "coalesced": "BOOLEAN",
            "leader_request_id": "VARCHAR", "latency_ms": "DOUBLE", "code": "VARCHAR",
            "cost_micros": "BIGINT", "saved_cost_micros": "BIGINT",
            "candidates": ["VARCHAR"], "order": ["VARCHAR"],
            "skipped": [{"model": "VARCHAR", "reason": "VARCHAR"}],
            "usage": {"prompt_tokens": "BIGINT", "completion_tokens": "BIGINT",
                      "total_tokens": "BIGINT"}
        }') AS d,
        type IN ('turnout.request.completed', 'turnout.request.failed',
                 'turnout.request.rejected', 'turnout.request.deadlettered',
                 'turnout.request.cancelled') AS terminal
    FROM events
    WHERE batch_seq > $lo AND batch_seq <= $hi
      AND (request_id IS NOT NULL OR type = 'turnout.request.deadlettered')
      AND type IN (
          'turnout.request.accepted', 'turnout.request.rejected',
          'turnout.request.deadlettered', 'turnout.request.completed',
          'turnout.request.failed', 'turnout.request.coalesced', 'turnout.request.cancelled',
          'turnout.route.decided', 'turnout.attempt.started', 'turnout.cache.hit')
)
SELECT
    rid AS request_id,
    any_value(tenant) AS tenant,
    any_value(d.task_type) FILTER (WHERE type = 'turnout.request.accepted') AS task_type,
    any_value(d.model) FILTER (WHERE type = 'turnout.request.accepted') AS requested_model,
    min(time) AS started_at,
    min(time) FILTER (WHERE terminal) AS finished_at,
    max(time) AS last_event_at,
    arg_min(type, time) FILTER (WHERE terminal) AS terminal_type,
    arg_min(d.code, time) FILTER (WHERE terminal) AS error_code,
    arg_min(d.model, time) FILTER (WHERE type = 'turnout.request.completed') AS final_model,
    list(DISTINCT {'attempt': d.attempt, 'model': d.model})
        FILTER (WHERE type = 'turnout.attempt.started') AS tried,
    -- a candidate skipped for an open breaker ahead of the first model tried is a
    -- fallback (the request went elsewhere); one skipped over price is policy
    max(len(list_filter(d.skipped, lambda s: s.reason = 'breaker_open'
            AND coalesce(list_position(d.candidates, s.model)
                         < list_position(d.candidates, struct_extract(d, 'order')[1]), true))))
        FILTER (WHERE type = 'turnout.route.decided') AS skipped_open,
    greatest(max(d.attempts) FILTER (WHERE terminal), max(d.attempt)) AS attempts,
    bool_or(type = 'turnout.cache.hit' OR (type = 'turnout.request.completed' AND d.cached))
        AS cached,
    bool_or(type = 'turnout.request.coalesced'
            OR (type = 'turnout.request.completed' AND d.coalesced)) AS coalesced,
    any_value(d.leader_request_id) FILTER (WHERE type = 'turnout.request.coalesced')
        AS leader_request_id,
    arg_min(d.latency_ms, time) FILTER (WHERE terminal) AS latency_ms,
    -- what the request used and was charged: its terminal's (a stream that failed after
    -- its first token or was cancelled is charged for what was streamed, too)
    arg_min(d.usage.prompt_tokens, time) FILTER (WHERE terminal) AS prompt_tokens,
    arg_min(d.usage.completion_tokens, time) FILTER (WHERE terminal) AS completion_tokens,
    arg_min(d.usage.total_tokens, time) FILTER (WHERE terminal) AS total_tokens,
    arg_min(d.cost_micros, time) FILTER (WHERE terminal) AS cost_micros,
    any_value(d.saved_cost_micros) FILTER (WHERE type = 'turnout.cache.hit')
        AS saved_cost_micros
FROM e
GROUP BY rid;

CREATE OR REPLACE TEMP TABLE _merged AS
SELECT
    n.request_id,
    coalesce(o.tenant, n.tenant) AS tenant,
    coalesce(o.task_type, n.task_type) AS task_type,
    coalesce(o.requested_model, n.requested_model) AS requested_model,
    least(o.started_at, n.started_at) AS started_at,
    coalesce(o.finished_at, n.finished_at) AS finished_at,
    greatest(o.last_event_at, n.last_event_at) AS last_event_at,
    coalesce(o.terminal_type, n.terminal_type) AS terminal_type,
    CASE WHEN o.terminal_type IS NULL THEN n.error_code ELSE o.error_code END AS error_code,
    coalesce(o.final_model, n.final_model) AS final_model,
    list_distinct(list_concat(o.tried, n.tried)) AS tried,
    greatest(o.skipped_open, n.skipped_open) AS skipped_open,
    greatest(o.attempts, n.attempts) AS attempts,
    coalesce(o.cached, false) OR coalesce(n.cached, false) AS cached,
    coalesce(o.coalesced, false) OR coalesce(n.coalesced, false) AS coalesced,
    coalesce(o.leader_request_id, n.leader_request_id) AS leader_request_id,
    coalesce(o.latency_ms, n.latency_ms) AS latency_ms,
    coalesce(o.prompt_tokens, n.prompt_tokens) AS prompt_tokens,
    coalesce(o.completion_tokens, n.completion_tokens) AS completion_tokens,
    coalesce(o.total_tokens, n.total_tokens) AS total_tokens,
    coalesce(o.cost_micros, n.cost_micros) AS cost_micros,
    coalesce(o.saved_cost_micros, n.saved_cost_micros) AS saved_cost_micros,
    date_trunc('minute', coalesce(o.finished_at, n.finished_at, least(o.started_at, n.started_at)))
        AS minute
FROM _delta AS n
LEFT JOIN request_facts AS o USING (request_id);

CREATE OR REPLACE TEMP TABLE _minutes AS
SELECT minute FROM _merged
UNION
SELECT o.minute FROM request_facts AS o SEMI JOIN _merged USING (request_id);

DELETE FROM request_facts WHERE request_id IN (SELECT request_id FROM _merged);

INSERT INTO request_facts BY NAME SELECT * FROM _merged;

DELETE FROM requests_per_minute WHERE minute IN (SELECT minute FROM _minutes);

INSERT INTO requests_per_minute BY NAME
SELECT
    minute,
    tenant,
    task_type,
    final_model AS model,
    outcome,
    count(*) AS requests,
    count(*) FILTER (WHERE cached) AS cached,
    count(*) FILTER (WHERE coalesced) AS coalesced,
    sum(attempts) AS attempts,
    sum(fallbacks) AS fallbacks,
    avg(latency_ms) AS latency_avg_ms,
    quantile_cont(latency_ms, 0.5) AS latency_p50_ms,
    quantile_cont(latency_ms, 0.99) AS latency_p99_ms,
    coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
    coalesce(sum(completion_tokens), 0) AS completion_tokens,
    coalesce(sum(total_tokens), 0) AS total_tokens,
    coalesce(sum(cost_micros), 0) AS cost_micros,
    coalesce(sum(cost_micros), 0) / 1e6 AS cost_usd
FROM requests
WHERE minute IN (SELECT minute FROM _minutes)
GROUP BY ALL;

DROP TABLE _delta;

DROP TABLE _merged;

DROP TABLE _minutes;
