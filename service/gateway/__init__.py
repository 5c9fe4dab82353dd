"""`turnout gateway`: the OpenAI-compatible HTTP front door (docs/guides/gateway.md).

from turnout.service.gateway import start_in_thread
with start_in_thread(cfg) as gw:
    client = openai.OpenAI(base_url=gw.base_url, api_key=key)
"""

from turnout.service.gateway.server import RunningGateway, start_in_thread

__all__ = ["RunningGateway", "start_in_thread"]
