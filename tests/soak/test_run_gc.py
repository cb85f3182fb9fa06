"""`bmsgw run` moves its start-up objects out of the garbage collector's way (Gateway.freeze_startup_objects).

Found by the soak: under load, full collections over the ~300,000 start-up objects of the default config
paused the whole process for 0.13-0.34 s (enough for the built-in simulator to miss the 100 ms RTU reply
timeout), and would take 15-25x longer on the controller's CPU.
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal

from gateway.app import Gateway
from tests.support import small_bank, write_config


def test_bmsgw_run_freezes_what_it_built_at_start_up_and_a_full_collection_no_longer_walks_it(tmp_path):
    path = write_config(tmp_path, base=small_bank(strings=1, cells=4))
    gw = Gateway(path)
    seen = {}

    async def main() -> None:
        async def stop_when_frozen() -> None:
            while gc.get_freeze_count() == 0:  # noqa: ASYNC110 gc.freeze() sets nothing to await: polled
                await asyncio.sleep(0.05)
            seen["frozen"] = gc.get_freeze_count()
            # in no generation the collector walks: in the permanent one
            seen["store_frozen"] = gc.is_tracked(gw.store) and not any(
                o is gw.store for g in (0, 1, 2) for o in gc.get_objects(generation=g))
            os.kill(os.getpid(), signal.SIGTERM)  # what systemd sends; serve_forever handles it

        waiter = asyncio.create_task(stop_when_frozen())
        await asyncio.wait_for(gw.serve_forever(), 120)
        await waiter

    assert gc.get_freeze_count() == 0
    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
    assert seen["frozen"] > 10_000, seen
    assert seen["store_frozen"], "the point store (built at start) is in the permanent generation"
