"""`turnout submit PROMPT`: send one request to the intake topic, optionally wait.

Without `--wait` the request id is printed and the command exits 0 at once
(the response goes to the shared responses topic). With `--wait` the command
opens a `turnout.service.client.AsyncTurnout` (its own reply topic), prints the
response JSON (coloured when stdout is a terminal) and exits 1 when the status
is not "ok" or no response came in `--timeout` seconds, with one line on
stderr saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from turnout.service.errors import TurnoutError

__all__ = ["cli_main", "print_response"]


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature}


async def _main(args: argparse.Namespace) -> int:
    from turnout.service.client import AsyncTurnout
    from turnout.service.kafka.errors import quiet_client_logs
    from turnout.service.runtime.config import load_config

    quiet_client_logs()
    cfg = load_config(args.config)
    call: dict[str, Any] = {
        "tenant": args.tenant, "task_type": args.task_type, "model": args.model,
        "request_id": args.request_id, **_params(args),
    }  # fmt: skip
    if not args.wait:
        async with AsyncTurnout(config=cfg, replies=False) as client:
            print(await client.submit(args.prompt, **call), flush=True)
        return 0
    async with AsyncTurnout(config=cfg) as client:
        try:
            doc = await client.route(args.prompt, timeout_s=args.timeout, **call)
        except TimeoutError as err:
            raise TurnoutError(f"{err}; raise --timeout or start one (`turnout router`)") from None
        finally:
            await client.close(delete_reply_topic=True)
    print_response(doc)
    if doc.get("status") != "ok":
        error = doc.get("error") or {}
        code = error.get("code", "unknown")
        message = error.get("message", "no message")
        print(f"turnout: error: request {doc.get('request_id')} {doc.get('status')}: "
              f"{code}: {message}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def print_response(doc: dict[str, Any]) -> None:
    """Pretty JSON on stdout; coloured by rich when stdout is a terminal."""
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.json import JSON

        Console().print(JSON(text))
    else:
        print(text, flush=True)


def cli_main(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))
