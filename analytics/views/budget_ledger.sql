-- Every budget movement per tenant: entry is reserved | charged | released |
-- exceeded. spent_delta_micros adds to the tenant's spend (charges);
-- reserved_delta_micros moves its open reservations (a charge or a release
-- settles the request's reservation). Money is integer micro-dollars
-- (*_usd = micros / 1e6); day is YYYY-MM-DD, month YYYY-MM, UTC.
CREATE OR REPLACE VIEW budget_ledger AS
WITH b AS (
    SELECT
        id,
        time,
        tenant,
        request_id,
        replace(type, 'turnout.budget.', '') AS entry,
        json_transform(data, '{
            "amount_micros": "BIGINT", "day": "VARCHAR", "month": "VARCHAR",
            "period": "VARCHAR", "level": "VARCHAR", "limit_micros": "BIGINT",
            "spent_micros": "BIGINT", "reserved_micros": "BIGINT",
            "requested_micros": "BIGINT"
        }') AS d
    FROM events
    WHERE type IN ('turnout.budget.reserved', 'turnout.budget.charged',
                   'turnout.budget.released', 'turnout.budget.exceeded')
),
r AS (
    SELECT
        *,
        sum(CASE WHEN entry = 'reserved' THEN d.amount_micros ELSE 0 END)
            OVER (PARTITION BY tenant, request_id) AS reservation_micros
    FROM b
)
SELECT
    time,
    tenant,
    request_id,
    entry,
    d.amount_micros AS amount_micros,
    d.amount_micros / 1e6 AS amount_usd,
    CASE WHEN entry = 'charged' THEN d.amount_micros ELSE 0 END AS spent_delta_micros,
    CASE entry
        WHEN 'reserved' THEN d.amount_micros
        WHEN 'released' THEN -d.amount_micros
        WHEN 'charged' THEN -reservation_micros
        ELSE 0
    END AS reserved_delta_micros,
    d.day AS day,
    d.month AS month,
    d.period AS period,
    d.level AS level,
    d.limit_micros AS limit_micros,
    d.spent_micros AS spent_micros,
    d.reserved_micros AS reserved_micros,
    d.requested_micros AS requested_micros,
    id AS event_id
FROM r;
