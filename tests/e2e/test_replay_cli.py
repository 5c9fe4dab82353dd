"""`turnout replay` as a user runs it, on an archive written by the real archive code."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.integration.test_router import collect
from turnout.analytics.archive import Archive, open_reader, snapshot_path
from turnout.analytics.rows import EventRow, KafkaPosition, record_row
from turnout.analytics.synthetic import envelopes, workload
from turnout.service.core import events as ev
from turnout.service.core.config import parse_config
from turnout.service.core.state import fold
from turnout.service.health import finished_outcomes
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.runtime.router import home_partition
from turnout.service.wire.cloudevents import Envelope, encode, format_time, wrap

T0 = 1_767_225_600_000
REPO = Path(__file__).resolve().parents[2]
MODEL = "anthropic/claude-3.5-haiku"


def replay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", "replay", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, **(env or {})},
    )  # fmt: skip


def event(data: Any, time_ms: int, n: int) -> Envelope:
    return wrap(data, id=f"x-{n}", time_ms=time_ms, source="turnout/router/e2e")


def breaker_story() -> list[Envelope]:
    """The model opens at +10 s (until +70 s), half-opens at +70 s, closes at +71 s."""
    return [
        event(ev.BreakerOpened(model=MODEL, reason="5 consecutive failures", failures=5,
                               calls=5, open_until_ms=T0 + 70_000), T0 + 10_000, 1),
        event(ev.BreakerHalfOpened(model=MODEL), T0 + 70_000, 2),
        event(ev.BreakerClosed(model=MODEL, successes=3), T0 + 71_000, 3),
    ]  # fmt: skip


def write_archive(path: Path, envs: Iterable[Envelope]) -> list[Envelope]:
    """Archive `envs` as the sink would: each on its tenant's partition, offsets in order."""
    envs = list(envs)
    offsets: dict[int, int] = {}
    rows = []
    for env in envs:
        p = home_partition(env.tenant)
        offsets[p] = offsets.get(p, -1) + 1
        row = record_row(*encode(env), KafkaPosition("t.events", p, offsets[p]))
        assert isinstance(row, EventRow)
        rows.append(row)
    with Archive.open(path) as archive:
        archive.load_batch(rows)
        archive.publish()
    return envs


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Envelope]]:
    path = tmp_path_factory.mktemp("replay") / "turnout.duckdb"
    return path, write_archive(path, [*envelopes(workload(45), t0_ms=T0), *breaker_story()])


def request_of(envs: list[Envelope], kind: str) -> str:
    stories = workload(45)
    return next(s.request_id for s in stories if s.kind == kind and s.request_id)


@pytest.mark.parametrize("command", ["trail", "state", "verify", "redrive"])
def test_every_replay_command_explains_itself(command: str) -> None:
    done = replay(command, "--help")
    assert done.returncode == 0 and "usage: turnout replay " + command in done.stdout


def test_the_trail_of_a_request_that_fell_back_shows_each_step_in_order(
    archive: tuple[Path, list[Envelope]],
) -> None:
    path, envs = archive
    rid = request_of(envs, "fallback")

    table = replay("trail", rid, "--duckdb", str(path))
    as_json = replay("trail", rid, "--duckdb", str(path), "--format", "json")

    assert table.returncode == as_json.returncode == 0, table.stderr + as_json.stderr
    steps = json.loads(as_json.stdout)
    assert [s["type"].removeprefix("turnout.") for s in steps] == [
        "request.accepted", "route.decided", "budget.reserved", "attempt.started",
        "attempt.failed", "fallback.taken", "attempt.started", "attempt.succeeded",
        "budget.charged", "request.completed",
    ]  # fmt: skip
    assert steps[0]["offset_ms"] == 0 and steps[-1]["offset_ms"] > 0
    assert [s["offset_ms"] for s in steps] == sorted(s["offset_ms"] for s in steps)
    assert "openai/gpt-4o-mini → anthropic/claude-3.5-haiku (503)" in table.stdout
    assert "http_503 (HTTP 503)" in table.stdout and "completed after 2 attempt(s)" in table.stdout


def test_an_unknown_request_id_fails_with_one_line_saying_what_to_do(
    archive: tuple[Path, list[Envelope]],
) -> None:
    done = replay("trail", "no-such-request", "--duckdb", str(archive[0]))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no events for request no-such-request" in done.stderr


def breaker_at(path: Path, at: str) -> dict[str, Any]:
    done = replay("state", "--at", at, "--duckdb", str(path), "--format", "json")
    assert done.returncode == 0, done.stderr
    state: dict[str, Any] = json.loads(done.stdout)["state"]
    return dict(state["breakers"][MODEL])


def test_state_at_a_moment_a_breaker_was_open_shows_it_open_and_later_closed(
    archive: tuple[Path, list[Envelope]],
) -> None:
    path = archive[0]
    during = breaker_at(path, format_time(T0 + 30_000))
    after = breaker_at(path, "2026-01-01T00:01:20+00:00")
    table = replay("state", "--at", format_time(T0 + 30_000), "--duckdb", str(path))

    assert during["status"] == "open" and during["open_until_ms"] == T0 + 70_000
    assert after["status"] == "closed"
    assert table.returncode == 0
    assert "breakers" in table.stdout and "open" in table.stdout
    assert format_time(T0 + 70_000) in table.stdout  # the deadline prints as a time
    for section in ("latency", "inflight", "finished"):
        assert section in table.stdout


def test_state_names_the_provider_of_each_model_when_providers_are_configured(
    archive: tuple[Path, list[Envelope]], tmp_path: Path
) -> None:
    path = archive[0]
    (tmp_path / "providers.toml").write_text(
        '[providers.anthropic]\nbase_url = "https://api.anthropic.com/v1"\n'
        'models = ["anthropic/*"]\n'
    )
    done = replay("state", "--at", "now", "--duckdb", str(path), "--format", "json",
                  "--config", str(tmp_path / "providers.toml"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    providers = json.loads(done.stdout)["state"]["providers"]
    assert providers[MODEL] == "anthropic"
    assert set(providers.values()) <= {"anthropic", "upstream"} and len(providers) > 1
    plain_run = replay("state", "--at", "now", "--duckdb", str(path), "--format", "json")
    assert "providers" not in json.loads(plain_run.stdout)["state"]  # none configured


@pytest.mark.parametrize("at", ["yesterday", "5m", "2026-02-30"])
def test_a_time_that_cannot_be_read_is_bad_usage(
    archive: tuple[Path, list[Envelope]], at: str
) -> None:
    done = replay("state", "--at", at, "--duckdb", str(archive[0]))
    assert done.returncode == 2 and "RFC 3339" in done.stderr


def saved_state(envs: list[Envelope], target: Path) -> Path:
    """What a router owning every partition would serve at GET /state, folded live in the
    order it decided (generation order, not the archive's log order)."""
    state = fold([(e.time_ms, e.data) for e in envs], parse_config({}, {}))
    doc = {"instance": "e2e", "ready": True, "partitions": list(range(12)),
           "system_partition": home_partition("_system"), "state": state.snapshot(),
           "finished_outcomes": finished_outcomes(state)}  # fmt: skip
    target.write_text(json.dumps(doc))
    return target


def tampered(path: Path, tmp: Path, sql: str) -> Path:
    copy = tmp / "tampered" / path.name
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(snapshot_path(path), snapshot_path(copy))
    with duckdb.connect(str(snapshot_path(copy))) as con:
        assert con.execute(sql).fetchall()[0][0] == 1  # one row changed
    return copy


def test_verify_passes_on_the_log_as_written_and_fails_with_a_diff_when_it_is_tampered(
    archive: tuple[Path, list[Envelope]], tmp_path: Path
) -> None:
    path, envs = archive
    saved = saved_state(envs, tmp_path / "state.json")
    terminal = "('completed', 'failed', 'rejected')"
    with open_reader(path) as con:
        (finished,) = con.execute(
            f"SELECT count(*) FROM requests WHERE outcome IN {terminal}"
        ).fetchone() or (None,)
    rid = request_of(envs, "ok")
    dropped = tampered(path, tmp_path, "DELETE FROM events WHERE type = "
                       f"'turnout.request.completed' AND request_id = '{rid}'")  # fmt: skip

    good = replay("verify", "--snapshot", str(saved), "--duckdb", str(path))
    bad = replay("verify", "--snapshot", str(saved), "--duckdb", str(dropped))

    assert good.returncode == 0, good.stdout + good.stderr
    assert "OK" in good.stdout and f"{finished} finished" in good.stdout
    assert bad.returncode == 1
    assert "finished" in bad.stdout and "inflight" in bad.stdout and rid in bad.stdout
    assert "finished_outcomes.by_outcome.completed" in bad.stdout
    assert bad.stderr.count("\n") == 1 and "differ from the log" in bad.stderr


def test_verify_sees_a_changed_breaker_event(
    archive: tuple[Path, list[Envelope]], tmp_path: Path
) -> None:
    path, envs = archive
    saved = saved_state(envs, tmp_path / "state.json")
    closed = tampered(path, tmp_path, "UPDATE events SET type = 'turnout.breaker.opened', data = "
                      "'{\"model\": \"" + MODEL + "\", \"reason\": \"x\", \"failures\": 1, "
                      "\"calls\": 1, \"open_until_ms\": 1}' WHERE id = 'x-3'")  # fmt: skip

    done = replay("verify", "--snapshot", str(saved), "--duckdb", str(closed))

    assert done.returncode == 1
    assert f"breakers.{MODEL}.status" in done.stdout
    assert '"open"' in done.stdout and '"closed"' in done.stdout


def test_redrive_without_stored_prompts_says_why_and_fails(
    archive: tuple[Path, list[Envelope]],
) -> None:
    done = replay("redrive", "--from", format_time(T0), "--to", format_time(T0 + 60_000),
                  "--duckdb", str(archive[0]))  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "can be redriven" in done.stderr and "store_prompts" in done.stderr


def accepted(rid: str, tenant: str, time_ms: int, *, prompt: str | None, n: int) -> Envelope:
    messages = None if prompt is None else [{"role": "user", "content": prompt}]
    data = ev.RequestAccepted(
        request_id=rid, tenant=tenant, task_type="general", model="pinned/model",
        messages_hash="h", prompt_tokens_est=3, max_tokens=16, params={"temperature": 0.5},
        messages=messages, cacheable=False, reply_to="someone.replies", metadata={"k": "v"},
    )  # fmt: skip
    return event(data, time_ms, n)


async def test_redrive_resubmits_the_window_with_new_ids_that_name_the_original(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    path = tmp_path / "turnout.duckdb"
    write_archive(path, [
        accepted("before", "acme", T0 - 1, prompt="too early", n=1),
        accepted("one", "acme", T0, prompt="first question", n=2),
        accepted("two", "globex", T0 + 500, prompt="second question", n=3),
        accepted("hashed", "acme", T0 + 600, prompt=None, n=4),
    ])  # fmt: skip
    env = {"TURNOUT_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
           "TURNOUT_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix}  # fmt: skip

    done = await asyncio.to_thread(
        replay, "redrive", "--from", format_time(T0), "--to", format_time(T0 + 1_000),
        "--duckdb", str(path), env=env,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "redrove 2 request(s)" in done.stdout
    assert "1 of 3 request(s) could not be redriven" in done.stderr
    records = await collect(kafka_settings.bootstrap, kafka_topics.requests, 2)
    bodies = {json.loads(r.value)["redrive_of"]: (r.key, json.loads(r.value)) for r in records}
    assert sorted(bodies) == ["one", "two"]
    key, body = bodies["one"]
    assert key == b"acme" and body["request_id"] not in {"one", "two"}
    assert body["messages"] == [{"role": "user", "content": "first question"}]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("pinned/model", 16, 0.5)
    assert body["metadata"] == {"k": "v"} and "reply_to" not in body
    assert body["request_id"] in done.stdout
