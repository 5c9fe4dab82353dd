"""The core's murmur2 must pick the same partition as Kafka clients do (aiokafka here)."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as kafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from turnout.service.core.partitioning import home_partition, murmur2


@given(st.binary(max_size=64))
def test_murmur2_equals_the_kafka_clients(data: bytes) -> None:
    assert murmur2(data) & 0x7FFFFFFF == kafka_murmur2(data) & 0x7FFFFFFF


@given(st.text(min_size=1, max_size=40))
def test_a_tenant_s_home_partition_is_the_one_its_records_land_on(tenant: str) -> None:
    expected = (kafka_murmur2(tenant.encode()) & 0x7FFFFFFF) % 12
    assert home_partition(tenant) == expected


def test_known_keys() -> None:
    # fixed points from the Java client's test suite (Utils.murmur2 on "21" and "foobar")
    assert murmur2(b"21") & 0x7FFFFFFF == (-973932308) & 0x7FFFFFFF
    assert murmur2(b"foobar") & 0x7FFFFFFF == (-790332482) & 0x7FFFFFFF
