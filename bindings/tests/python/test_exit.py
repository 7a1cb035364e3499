"""The process exits cleanly while a library thread is still inside Python.

A library thread wakes an awaitable by calling into Python (uniffi's continuation
callback). If the interpreter starts finalizing while such a thread is still inside
Python, the interpreter ends that thread by unwinding it through the library's frames,
and the process aborts. The module waits for those threads at exit (`settle`).

To make that moment certain: the event loop holds the waking thread inside Python for
half a second after it has scheduled a result (a read's, which always comes from a
library thread), while the main thread goes straight on to exit; and garbage collected during finalization (a reference cycle, which the
interpreter collects after it has started finalizing) keeps the interpreter finalizing,
the GIL released, for three seconds.

Run by tests/tests/bindings.rs with the same environment as test_sdk.py.
"""

import asyncio
import threading
import time

import gateway_sdk as sdk
from sdk_world import config

woken_from_library = 0


class SlowWakeLoop(asyncio.SelectorEventLoop):
    def call_soon_threadsafe(self, *args, **kw):
        global woken_from_library
        handle = super().call_soon_threadsafe(*args, **kw)
        if threading.current_thread() is not threading.main_thread():
            woken_from_library += 1
            time.sleep(0.5)
        return handle


class SlowFinalization:
    # Bound at definition: module globals may be gone when this runs.
    def __del__(self, sleep=time.sleep):
        sleep(3.0)


async def main():
    client = sdk.GatewayClient(config("SDK_ROUTER_PORT"))
    conn = await client.connect()
    # The read is awaited (its continuation stored) before the write sends what the
    # echo gateway returns, so the read's result always wakes the loop from a library
    # thread.
    got, _ = await asyncio.gather(conn.read(64), conn.write(b"ping"))
    assert got and b"ping".startswith(got), got
    assert woken_from_library >= 1, "the read never woke the loop from a library thread"
    print(f"python bindings: ok (woken {woken_from_library} time(s) from a library thread)")


loop = SlowWakeLoop()
loop.run_until_complete(main())
loop.close()

# Left for the collection the interpreter runs while it finalizes.
garbage = SlowFinalization()
garbage.cycle = garbage
del garbage
