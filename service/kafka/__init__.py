"""The Kafka shell: settings, topic bootstrap, producer and consumer adapters, embedded broker.

- `settings`: `KafkaSettings` and `Topics` (no Kafka client imported);
- `topics`: `ensure_topics` / `ensure_topic`, `turnout topics ensure`;
- `producer`: `Producer` (acks=all, no idempotence, 1 MB record limit);
- `consumer`: `GroupConsumer` (manual commits, rebalance hooks) and `Reader`;
- `broker`: `EmbeddedBroker` (Tansu) and `turnout broker`;
- `errors`: the one translation of aiokafka failures into Turnout errors;
- `codec`: compiled encoders/decoders for aiokafka's produce and fetch messages;
- `fetch`: aiokafka's per-partition fetch bookkeeping, the same decisions in fewer calls.

Every module follows the rules of docs/reference/broker.md for code that must run on
both Tansu and Apache Kafka; each says which ones it applies.
"""
