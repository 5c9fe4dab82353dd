"""The Kafka shell against a real broker: topics, producer, consumers, errors.

No mocks: every test talks to the session's Kafka (see tests/conftest.py).
Tests read with the non-group `Reader` where a group is not the point, since a
group join costs session_timeout/2 on Tansu (docs/reference/broker.md rule 11).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import warnings

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource
from aiokafka.admin.config_resource import ConfigResourceType as ResourceType

from turnout.service.errors import TurnoutError
from turnout.service.kafka import fetch
from turnout.service.kafka.broker import free_port
from turnout.service.kafka.consumer import (
    GroupConsumer,
    Reader,
    TopicPartition,
    next_offsets,
    topic_partitions,
)
from turnout.service.kafka.errors import KafkaUnavailable, RecordTooLarge
from turnout.service.kafka.producer import BatchedProducer, OutRecord, Producer
from turnout.service.kafka.settings import (
    MAX_RECORD_BYTES,
    KafkaSettings,
    KafkaSettingsError,
    Topics,
)
from turnout.service.kafka.topics import ensure_topic, ensure_topics, existing_topics

HEADERS = [
    ("ce_specversion", b"1.0"),
    ("ce_type", b"turnout.request.accepted"),
    ("ce_id", "0192-é".encode()),
    ("empty", b""),
    ("dup", b"1"),
    ("dup", b"2"),
]


def _records(n: int, topic: str, key: bytes = b"acme") -> list[OutRecord]:
    return [OutRecord(topic, f"value-{i}".encode(), key=key, headers=HEADERS) for i in range(n)]


async def _read_all(settings: KafkaSettings, topic: str, count: int) -> list:
    async with Reader(settings, await topic_partitions(settings, [topic])) as reader:
        seen = itertools.count(1)
        return await reader.read_until(lambda _: next(seen) == count)


# -- topics -----------------------------------------------------------------


@pytest.mark.tansu
async def test_ensure_topics_creates_five_topics_then_nothing(kafka_settings: KafkaSettings):
    first = await ensure_topics(kafka_settings)
    second = await ensure_topics(kafka_settings)

    p = kafka_settings.topic_prefix
    expected = {f"{p}.requests": 12, f"{p}.events": 12, f"{p}.responses": 12, f"{p}.dlq": 3,
                f"{p}.snapshots": 1}  # fmt: skip
    on_broker = await existing_topics(kafka_settings)
    assert {t.name: t.actual_partitions for t in first.created} == expected
    assert {name: on_broker[name] for name in expected} == expected
    assert second.nothing_to_do and not second.warnings
    assert [(t.name, t.created) for t in second.topics] == [(n, False) for n in expected]


TOPIC = ResourceType.TOPIC


async def _topic_configs(settings: KafkaSettings, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_configs([ConfigResource(TOPIC, topic)])
    finally:
        await admin.close()
    return {entry[0]: entry[1] for entry in described.resources[0][4]}


async def _alter(settings: KafkaSettings, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(TOPIC, topic, configs)])
    finally:
        await admin.close()
    for _ in range(200):  # KRaft applies an alter a moment after it answers
        if configs.items() <= (await _topic_configs(settings, topic)).items():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{configs} never applied to {topic}")


async def test_topics_get_their_retention_and_drifted_configs_are_set_back(
    kafka_engine: str, kafka_settings: KafkaSettings
):
    if kafka_engine == "tansu":
        pytest.fail("topic configs need Apache Kafka (Tansu stores them without effect)")
    settings = kafka_settings.replace(requests_retention_ms=3_600_000)
    await ensure_topics(settings)
    events, requests = settings.topics.events, settings.topics.requests
    created = await _topic_configs(settings, requests), await _topic_configs(settings, events)
    snapshots = await _topic_configs(settings, settings.topics.snapshots)

    # someone sets a shorter retention by hand, and a config of their own
    await _alter(settings, events, {"retention.ms": "1000", "segment.ms": "600000"})
    again = await ensure_topics(settings)
    after = await _topic_configs(settings, events)

    assert created[0]["retention.ms"] == "3600000" and created[0]["cleanup.policy"] == "delete"
    assert created[1]["retention.ms"] == "-1"  # events: kept until snapshots exist
    assert snapshots["cleanup.policy"] == "compact"  # the newest snapshot per partition
    # and compacted within minutes, not when a broker-default 1 GiB segment fills
    assert snapshots["segment.ms"] == "600000" and snapshots["min.cleanable.dirty.ratio"] == "0.1"
    (fixed,) = [t for t in again.topics if t.fixed]
    assert fixed.name == events and fixed.fixed == ("retention.ms: 1000 -> -1",)
    assert after["retention.ms"] == "-1" and after["segment.ms"] == "600000"
    assert again.ok and not again.nothing_to_do


@pytest.mark.tansu
async def test_producers_are_idempotent_on_apache_kafka_and_not_on_tansu(
    kafka_engine: str, kafka_settings: KafkaSettings, kafka_topics: Topics
):
    async with Producer(kafka_settings) as producer:
        metas = await producer.send_batch(_records(5, kafka_topics.dlq))
        idempotent = producer.idempotent

    assert len(metas) == 5
    assert idempotent is (kafka_engine != "tansu")


@pytest.mark.tansu
async def test_an_idle_consumer_fetches_seldom_on_kafka_yet_gets_a_new_record_at_once(
    kafka_engine: str, kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """After a second without records a consumer's fetches wait `idle_fetch_max_wait_ms`
    (here 5 s) on Apache Kafka, which answers a waiting fetch as soon as a record comes:
    the record still arrives at once, and the short wait is back for the next fetches.
    Tansu never answers early, so there the wait stays short."""
    settings = kafka_settings.replace(fetch_max_wait_ms=10, idle_fetch_max_wait_ms=5_000)
    tp = TopicPartition(kafka_topics.dlq, 0)
    loop = asyncio.get_running_loop()
    async with Reader(settings, [tp]) as reader, Producer(settings) as producer:
        began = loop.time()
        while loop.time() - began < 1.5:  # idle: nothing to read
            assert await reader.getmany(timeout_ms=100) == {}
        idle_wait = reader.fetch_max_wait_ms
        await asyncio.sleep(0.3)  # a fetch with the idle wait is now waiting
        sent_at = loop.time()
        await producer.send_batch([OutRecord(tp.topic, b"v", key=b"k", partition=0)])
        got: list[object] = []
        while not got and loop.time() - sent_at < 10:
            got = [r for rs in (await reader.getmany(timeout_ms=100)).values() for r in rs]
        waited = loop.time() - sent_at
        busy_wait, idle_after = reader.fetch_max_wait_ms, reader.idle
    assert len(got) == 1 and not idle_after and busy_wait == 10
    if kafka_engine == "tansu":
        assert idle_wait == 10
    else:  # answered long before the 5 s the idle fetch could have waited
        assert idle_wait == 5_000 and waited < 2.5


async def test_ensure_topic_creates_one_and_warns_on_other_partition_count(
    kafka_settings: KafkaSettings,
):
    name = f"{kafka_settings.topic_prefix}.replies.client-1"
    created = await ensure_topic(kafka_settings, name, 2)
    again = await ensure_topic(kafka_settings, name, 5)

    assert created.created and created.actual_partitions == 2 and created.warning is None
    assert not again.created and again.actual_partitions == 2
    assert again.warning and "has 2 partitions" in again.warning and "expects 5" in again.warning


@pytest.mark.parametrize("prefix", ["bad name!", "x" * 245, "ünï"])
def test_invalid_topic_prefix_is_refused_before_any_broker_sees_it(prefix: str):
    with pytest.raises(TurnoutError, match="invalid Kafka topic name"):
        KafkaSettings(topic_prefix=prefix)


def test_settings_from_env_override_defaults():
    env = {
        "TURNOUT_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
        "TURNOUT_KAFKA_TOPIC_PREFIX": "prod",
        "TURNOUT_KAFKA_GROUP_ID": "routers",
        "TURNOUT_KAFKA_REPLICATION_FACTOR": "3",
    }
    settings = KafkaSettings.from_env(environ=env)
    assert settings.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.topics == Topics(
        "prod.requests", "prod.events", "prod.responses", "prod.dlq", "prod.snapshots"
    )
    assert (settings.group_id, settings.replication_factor) == ("routers", 3)
    with pytest.raises(KafkaSettingsError, match="TURNOUT_KAFKA_LINGER_MS='soon'"):
        KafkaSettings.from_env(environ={"TURNOUT_KAFKA_LINGER_MS": "soon"})


def test_bad_settings_list_every_problem():
    with pytest.raises(KafkaSettingsError) as err:
        KafkaSettings(heartbeat_interval_ms=40_000, compression="brotli", max_record_bytes=2**21)
    assert len(err.value.problems) == 3


# -- unreachable broker ----------------------------------------------------------


async def test_unreachable_broker_gives_one_clear_error_fast(kafka_settings: KafkaSettings):
    settings = kafka_settings.replace(bootstrap=f"127.0.0.1:{free_port()}", connect_timeout_ms=2000)
    message = (
        f"cannot reach Kafka at {settings.bootstrap}: start one with `turnout broker` "
        "or set TURNOUT_KAFKA_BOOTSTRAP"
    )
    with pytest.raises(KafkaUnavailable) as producer_err:
        await Producer(settings).start()
    with pytest.raises(KafkaUnavailable) as admin_err:
        await ensure_topics(settings)
    with pytest.raises(KafkaUnavailable):
        await GroupConsumer(settings, [settings.topics.events]).start()
    assert str(producer_err.value) == str(admin_err.value) == message


# -- producer and consumers ------------------------------------------------------


async def test_plain_aiokafka_record_roundtrips_through_the_reader(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    raw = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all")
    await raw.start()
    try:
        sent = await raw.send_and_wait(
            kafka_topics.requests, b'{"x": 1}', key=b"acme", headers=HEADERS
        )
    finally:
        await raw.stop()

    (got,) = await _read_all(kafka_settings, kafka_topics.requests, 1)
    assert (got.key, got.value, list(got.headers)) == (b"acme", b'{"x": 1}', HEADERS)
    assert (got.partition, got.offset) == (sent.partition, sent.offset)


@pytest.mark.tansu
async def test_adapter_records_roundtrip_through_plain_aiokafka(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    async with Producer(kafka_settings) as producer:
        metas = await producer.send_batch(_records(5, kafka_topics.events))
        tombstone = await (await producer.send(kafka_topics.events, None, key=b"acme"))

    tp = TopicPartition(kafka_topics.events, metas[0].partition)
    raw = AIOKafkaConsumer(bootstrap_servers=kafka_settings.bootstrap, enable_auto_commit=False)
    await raw.start()
    try:
        raw.assign([tp])
        await raw.seek_to_beginning(tp)
        got = [await raw.getone() for _ in range(6)]
    finally:
        await raw.stop()

    assert [m.partition for m in metas] == [tp.partition] * 5 == [tombstone.partition] * 5
    assert [r.value for r in got] == [f"value-{i}".encode() for i in range(5)] + [None]
    assert all(r.key == b"acme" for r in got)
    assert [list(r.headers) for r in got[:5]] == [HEADERS] * 5


@pytest.mark.tansu
async def test_batched_records_keep_their_partitions_order_and_learn_their_offsets(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """The router's event producers build their own batches: small batches fill and leave
    before the linger ends, yet every partition's records land in the order enqueued and
    each future resolves with its own record's offset."""
    topic = kafka_topics.events
    settings = kafka_settings.replace(linger_ms=50, max_batch_bytes=1024)
    async with BatchedProducer(settings) as producer:
        futures = [
            producer.enqueue(
                topic, f"value-{i}".encode(), key=b"acme", headers=HEADERS, partition=i % 3
            )
            for i in range(300)
        ]
        metas = await asyncio.gather(*futures)
        late = await (await producer.send(topic, b"late", key=b"acme", partition=0))

    for p in range(3):
        assert [m.offset for m in metas[p::3]] == list(range(100))
        assert {(m.topic, m.partition) for m in metas[p::3]} == {(topic, p)}
    assert (late.partition, late.offset) == (0, 100)
    got = await _read_all(kafka_settings, topic, 301)
    for p in range(3):
        values = [r.value for r in got if r.partition == p]
        assert values == [f"value-{i}".encode() for i in range(p, 300, 3)] + ([b"late"] * (p == 0))
    assert all(list(r.headers) == HEADERS for r in got if r.value != b"late")


@pytest.mark.tansu
async def test_a_batched_record_without_a_partition_goes_where_aiokafka_would_put_its_key(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """Responses are keyed by request id: the batched producer partitions keys as aiokafka's
    (and Java's) default partitioner does, so a reader of one partition sees its keys."""
    keys = [f"req-{i}".encode() for i in range(40)]
    async with Producer(kafka_settings) as plain, BatchedProducer(kafka_settings) as batched:
        expected = await plain.send_batch(OutRecord(kafka_topics.events, b"a", k) for k in keys)
        got = await batched.send_batch(OutRecord(kafka_topics.events, b"b", k) for k in keys)
        keyless = await (await batched.send(kafka_topics.events, b"c"))

    assert [m.partition for m in got] == [m.partition for m in expected]
    assert len({m.partition for m in got}) > 1
    assert 0 <= keyless.partition < 12


async def test_batched_records_for_a_topic_made_after_the_producer_started_keep_their_order(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """A batch for a topic the producer has no metadata for yet waits for it (aiokafka's
    `send_batch`); the batches after it are handed over at once, and none overtakes it."""
    async with BatchedProducer(kafka_settings.replace(linger_ms=0)) as producer:
        topic = f"{kafka_topics.events}.later"
        await ensure_topic(kafka_settings, topic, 2)
        futures = []
        for i in range(6):  # a batch per loop step: the first waits for the metadata
            futures.append(producer.enqueue(topic, b"v%d" % i, partition=i % 2))
            await asyncio.sleep(0)
        metas = await asyncio.wait_for(asyncio.gather(*futures), 30)

    assert [(m.partition, m.offset) for m in metas] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (0, 2),
        (1, 2),
    ]
    got = await _read_all(kafka_settings, topic, 6)
    assert [r.value for r in got if r.partition == 0] == [b"v0", b"v2", b"v4"]


async def test_batched_records_still_lingering_are_delivered_when_the_producer_stops(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    producer = BatchedProducer(kafka_settings.replace(linger_ms=60_000))
    await producer.start()
    futures = [producer.enqueue(kafka_topics.events, b"v%d" % i, partition=i % 2) for i in range(6)]
    await producer.stop()  # long before the linger would have sent them

    assert [f.result().offset for f in futures] == [0, 0, 1, 1, 2, 2]
    assert len(await _read_all(kafka_settings, kafka_topics.events, 6)) == 6


async def test_a_batched_flush_delivers_what_lingers_and_the_producer_goes_on(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    topic = kafka_topics.events
    async with BatchedProducer(kafka_settings.replace(linger_ms=60_000)) as producer:
        first = [producer.enqueue(topic, b"a%d" % i, partition=0) for i in range(3)]
        await asyncio.wait_for(producer.flush(), 30)  # not the minute's linger
        assert [f.result().offset for f in first] == [0, 1, 2]
        later = producer.enqueue(topic, b"b", partition=0)
        await asyncio.wait_for(producer.flush(), 30)
        assert later.result().offset == 3


async def test_an_urgent_record_leaves_at_once_and_takes_its_partitions_lingering_records(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """What the router's answers producer relies on: a response or a first token
    (urgent) is not held by the linger the later chunks of streams wait out, the
    records lingering in its partition go with it, in order, and other partitions
    keep lingering."""
    topic = kafka_topics.events
    async with BatchedProducer(kafka_settings.replace(linger_ms=60_000)) as producer:
        before = [producer.enqueue(topic, b"chunk%d" % i, partition=0) for i in range(3)]
        elsewhere = producer.enqueue(topic, b"other", partition=1)
        urgent = producer.enqueue(topic, b"first token", partition=0, urgent=True)
        await asyncio.wait_for(urgent, 30)  # not the minute's linger
        assert [f.result().offset for f in before] == [0, 1, 2]
        assert urgent.result().offset == 3
        await asyncio.sleep(0.5)
        assert not elsewhere.done()  # partition 1 had nothing urgent: still lingering
        after = producer.enqueue(topic, b"chunk3", partition=0)
        keyed = await producer.send(topic, b"response", key=b"k", partition=0, urgent=True)
        await asyncio.wait_for(keyed, 30)
        assert after.result().offset == 4 and keyed.result().offset == 5
        # urgent while its partition's batch is in flight: it leaves once that is in
        one = producer.enqueue(topic, b"u1", partition=0, urgent=True)
        await asyncio.sleep(0)  # its batch was handed over: in flight now
        two = producer.enqueue(topic, b"u2", partition=0, urgent=True)
        await asyncio.wait_for(asyncio.gather(one, two), 30)
        assert (one.result().offset, two.result().offset) == (6, 7)
    assert elsewhere.result().offset == 0  # delivered when the producer stopped
    got = await _read_all(kafka_settings, topic, 9)
    assert [r.value for r in got if r.partition == 0] == [
        b"chunk0", b"chunk1", b"chunk2", b"first token", b"chunk3", b"response", b"u1", b"u2",
    ]  # fmt: skip


async def test_a_batched_record_for_a_partition_the_topic_lacks_fails_and_others_go_on(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    async with BatchedProducer(kafka_settings.replace(linger_ms=0)) as producer:
        lost = producer.enqueue(kafka_topics.events, b"nowhere", partition=999)
        kept = producer.enqueue(kafka_topics.events, b"somewhere", partition=1)
        with pytest.raises(Exception):  # noqa: B017 - aiokafka's own error, whatever it is
            await asyncio.wait_for(lost, 30)
        assert (await asyncio.wait_for(kept, 30)).partition == 1
        with pytest.raises(RecordTooLarge):
            producer.enqueue(kafka_topics.events, b"x" * (MAX_RECORD_BYTES + 1), partition=1)


async def test_records_over_the_size_limit_are_refused_before_sending(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    key = b"acme"
    fits = b"x" * (MAX_RECORD_BYTES - len(key))
    async with Producer(kafka_settings) as producer:
        with pytest.raises(RecordTooLarge, match=f"over the {MAX_RECORD_BYTES}-byte limit"):
            await producer.send(kafka_topics.dlq, fits + b"x", key=key)
        with pytest.raises(RecordTooLarge):
            await producer.send(kafka_topics.dlq, fits, key=key, headers=[("h", b"1")])
        meta = await (await producer.send(kafka_topics.dlq, fits, key=key))

    reader = Reader(kafka_settings, [TopicPartition(kafka_topics.dlq, meta.partition)])
    async with reader:
        (got,) = await reader.read_until(lambda r: True)
    assert (got.offset, len(got.value)) == (0, len(fits))


async def test_reader_returns_records_after_the_condition_on_the_next_read(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    async with Producer(kafka_settings) as producer:
        metas = await producer.send_batch(_records(10, kafka_topics.responses))
    tp = TopicPartition(kafka_topics.responses, metas[0].partition)

    async with Reader(kafka_settings, [tp]) as reader:
        first = await reader.read_until(lambda r: r.offset == 3)
        rest = await reader.read_until(lambda r: r.offset == 9)
        with pytest.raises(TimeoutError, match="0 records read"):
            await reader.read_until(lambda r: True, timeout_s=0.3)
    async with Reader(kafka_settings, [tp], start_offsets={tp: 7}) as reader:
        tail = await reader.read_until(lambda r: r.offset == 9)

    assert [r.offset for r in first] == [0, 1, 2, 3]
    assert [r.offset for r in rest] == [4, 5, 6, 7, 8, 9]
    assert [r.offset for r in tail] == [7, 8, 9]


async def test_the_lean_fetch_path_reads_what_aiokafkas_own_reads(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """service/kafka/fetch.py against aiokafka's own fetch bookkeeping, on the broker:
    the same records from every partition, the same high-water marks, and a position
    past the end reset to the partition's beginning the same way (Apache Kafka only:
    Tansu never answers OffsetOutOfRange, docs/reference/broker.md)."""
    sent = [OutRecord(kafka_topics.events, f"value-{i}".encode(), key=f"key-{i % 7}".encode(),
                      headers=HEADERS) for i in range(60)]  # fmt: skip
    async with Producer(kafka_settings) as producer:
        metas = await producer.send_batch(sent)
    partitions = await topic_partitions(kafka_settings, [kafka_topics.events])
    tp = TopicPartition(kafka_topics.events, metas[0].partition)
    last = max(m.offset for m in metas if m.partition == tp.partition)

    def rows(records: list) -> list[tuple]:
        return sorted((r.partition, r.offset, r.key, r.value, list(r.headers)) for r in records)

    async def read(lean: bool) -> tuple[list, list, dict]:
        (fetch.install if lean else fetch.uninstall)()
        try:
            async with Reader(kafka_settings, partitions) as reader:
                seen = itertools.count(1)
                everything = await reader.read_until(lambda _: next(seen) == len(sent))
                reader.seek(tp, last + 1_000)  # out of range: reset to the earliest
                again = await reader.read_until(
                    lambda r: r.partition == tp.partition and r.offset == last
                )
                marks = {p.partition: reader._consumer.highwater(p) for p in partitions}
                return rows(everything), rows(again), marks
        finally:
            fetch.install()

    own, lean = await read(lean=False), await read(lean=True)
    assert lean == own
    assert len(lean[0]) == len(sent) and lean[1][0][1] == 0
    assert lean[2][tp.partition] == last + 1


async def test_a_client_cancelled_while_it_starts_leaves_no_connection_open(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """A rebalance may stop a reader that is still starting: nothing may leak.

    aiokafka drops the connection it bootstraps through when cancelled mid-start;
    cancelling at every point of the first ~15 ms hits that window many times.
    """
    tp = TopicPartition(kafka_topics.events, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for step in range(30):
            reader = Reader(kafka_settings, [tp])
            starting = asyncio.create_task(reader.start())
            await asyncio.sleep(step / 2000)
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await reader.stop()
            del reader, starting
            gc.collect()

    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def _consume(consumer: GroupConsumer, count: int, max_records: int | None = None) -> list:
    records: list = []
    async with asyncio.timeout(20):
        while len(records) < count:
            fetched = await consumer.getmany(timeout_ms=200, max_records=max_records)
            for batch in fetched.values():
                records += batch
    return records


async def test_a_member_reports_how_far_behind_the_end_it_is(
    kafka_engine: str, kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """Consumer lag from end offsets: only right on Apache Kafka (docs/reference/broker.md
    rule 4)."""
    if kafka_engine == "tansu":
        pytest.fail("lag needs Apache Kafka's end offsets, and the suite runs on Tansu")
    async with Producer(kafka_settings) as producer:
        metas = await producer.send_batch(_records(30, kafka_topics.dlq))
    tp = TopicPartition(kafka_topics.dlq, metas[0].partition)
    assert {m.partition for m in metas} == {tp.partition}

    async with GroupConsumer(kafka_settings, [kafka_topics.dlq]) as member:
        await member.wait_for_assignment()
        first = await _consume(member, 10, max_records=10)
        lag = await member.lag()

    assert len(first) == 10
    assert lag[tp.partition] == 20


@pytest.mark.tansu
async def test_commit_then_a_new_member_starts_after_the_committed_offset(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    async with Producer(kafka_settings) as producer:
        metas = await producer.send_batch(_records(10, kafka_topics.dlq))
    tp = TopicPartition(kafka_topics.dlq, metas[0].partition)

    async with GroupConsumer(kafka_settings, [kafka_topics.dlq]) as first:
        records = await _consume(first, 10)
        await first.commit(next_offsets({tp: records[:6]}))
        assert await first.committed(tp) == 6

    async with GroupConsumer(kafka_settings, [kafka_topics.dlq]) as second:
        # the first member left the group: no wait for its session to expire
        await second.wait_for_assignment(timeout_s=kafka_settings.session_timeout_ms / 1000)
        resumed = await _consume(second, 4)
        assert await second.committed(tp) == 6
    assert [r.offset for r in resumed] == [6, 7, 8, 9]


async def test_rebalance_hooks_fire_with_the_assigned_partitions(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    calls: list[tuple[str, str, frozenset]] = []

    def member(name: str) -> GroupConsumer:
        def hook(kind: str):
            async def record(tps: frozenset) -> None:
                calls.append((name, kind, tps))

            return record

        return GroupConsumer(
            kafka_settings,
            [kafka_topics.dlq],
            on_assigned=hook("assigned"),
            on_revoked=hook("revoked"),
        )

    everything = frozenset(TopicPartition(kafka_topics.dlq, p) for p in range(3))
    async with member("a") as a:
        assert await a.wait_for_assignment() == everything
        assert calls == [("a", "assigned", everything)]
        async with member("b") as b:
            theirs = await b.wait_for_assignment()
            mine = await a.wait_for_assignment()  # a took part in that rebalance
        assert mine | theirs == everything and not mine & theirs
        assert ("a", "revoked", everything) in calls
        assert ("a", "assigned", mine) in calls and ("b", "assigned", theirs) in calls
        assert ("b", "revoked", theirs) in calls  # stop() hands partitions back


async def test_a_failing_assignment_hook_is_raised_not_swallowed(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    def explode(tps: frozenset) -> None:
        raise RuntimeError(f"cannot rebuild state for {len(tps)} partitions")

    async with GroupConsumer(kafka_settings, [kafka_topics.dlq], on_assigned=explode) as member:
        with pytest.raises(RuntimeError, match="cannot rebuild state for 3 partitions"):
            await member.wait_for_assignment()
