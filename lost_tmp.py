import asyncio, sys
from collections import defaultdict
from aiokafka import AIOKafkaConsumer, TopicPartition
from service.wire import cloudevents as ce
T = {"turnout.request.completed","turnout.request.failed","turnout.request.rejected"}
async def main(bs, prefix):
    c = AIOKafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    parts = [TopicPartition(f"{prefix}.events", p) for p in range(12)]
    c.assign(parts); await c.seek_to_beginning(*parts)
    ends = await c.end_offsets(parts)
    trail = defaultdict(list); left = set(parts)
    while left:
        b = await c.getmany(timeout_ms=1000)
        for tp, rs in b.items():
            for r in rs:
                e = ce.decode(r.key, r.value, r.headers)
                rid = getattr(e.data, "request_id", None)
                if rid: trail[rid].append((tp.partition, r.offset, e.type.removeprefix("turnout."), e.source.rsplit("/",1)[-1], e.time_ms % 100000))
        for tp in list(left):
            if await c.position(tp) >= ends[tp]: left.discard(tp)
    lost = [rid for rid, t in trail.items() if not any("turnout."+x[2] in T for x in t)]
    print(len(lost))
    for rid in lost[:3]:
        print(rid); [print("   ", x) for x in trail[rid]]
    await c.stop()
asyncio.run(main(sys.argv[1], sys.argv[2]))
