-- One row per request: who asked, what was tried, how it ended, what it cost.
-- Reads request_facts (a table the sink folds from events before each
-- snapshot), so it never scans the event log. outcome is completed | failed |
-- rejected | cancelled | deadlettered, or in_flight until the terminal event arrives.
-- models_tried is in attempt order; final_model answered (or, for a failed
-- request, was tried last); fallbacks counts model switches, and the
-- candidates ahead of the first model tried that were skipped for an open
-- breaker; retries the attempts on the same model again; minute is the minute the request counts
-- in for requests_per_minute (finished, else started). Tokens and cost are what the
-- request used and was charged, from its terminal event: a completed request's, and
-- a stream that failed after its first token (partial) or was cancelled is charged
-- for what was streamed; another failure costs 0 (its tokens are NULL), and a
-- rejected or dead-lettered request has neither (NULL).
CREATE OR REPLACE VIEW requests AS
WITH f AS (
    SELECT *, list_transform(list_sort(tried), lambda t: t.model) AS tried_models
    FROM request_facts
),
g AS (
    SELECT *, list_filter(tried_models, lambda m, i: list_position(tried_models, m) = i)
              AS models_tried
    FROM f
)
SELECT
    request_id,
    tenant,
    task_type,
    requested_model,
    models_tried,
    coalesce(final_model, tried_models[-1]) AS final_model,
    CASE terminal_type
        WHEN 'turnout.request.completed' THEN 'completed'
        WHEN 'turnout.request.failed' THEN 'failed'
        WHEN 'turnout.request.rejected' THEN 'rejected'
        WHEN 'turnout.request.cancelled' THEN 'cancelled'
        WHEN 'turnout.request.deadlettered' THEN 'deadlettered'
        ELSE 'in_flight'
    END AS outcome,
    error_code,
    coalesce(attempts, len(tried_models), 0) AS attempts,
    greatest(len(models_tried) - 1, 0) + coalesce(skipped_open, 0) AS fallbacks,
    greatest(coalesce(attempts, len(tried_models), 0) - len(models_tried), 0) AS retries,
    coalesce(cached, false) AS cached,
    coalesce(coalesced, false) AS coalesced,
    leader_request_id,
    started_at,
    finished_at,
    latency_ms,
    prompt_tokens,
    completion_tokens,
    total_tokens,
    cost_micros,
    cost_micros / 1e6 AS cost_usd,
    saved_cost_micros,
    minute
FROM g;
