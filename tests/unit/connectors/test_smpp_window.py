"""The SMPP bind window: never more than its size held, FIFO, no slot lost to a cancel."""

from __future__ import annotations

import asyncio

from connectors.smpp import Window


def test_the_window_holds_at_most_its_size_and_serves_waiters_in_order() -> None:
    async def main() -> tuple[int, list[int]]:
        window, held, most, order = Window(3), 0, 0, []

        async def one(i: int) -> None:
            nonlocal held, most
            async with window:
                order.append(i)
                held += 1
                most = max(most, held)
                await asyncio.sleep(0.001 * (i % 4))
                held -= 1

        await asyncio.gather(*(one(i) for i in range(50)))
        return most, order

    most, order = asyncio.run(main())
    assert most == 3
    assert order == list(range(50))


def test_a_cancelled_waiter_loses_no_slot() -> None:
    async def main() -> int:
        window = Window(1)
        await window.__aenter__()
        waiting = [asyncio.create_task(window.__aenter__()) for _ in range(3)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # cancelled while waiting
        await window.__aexit__()  # hands the slot to waiting[1] (waiting[0] is skipped)
        waiting[1].cancel()  # cancelled after it was handed the slot: passes it on
        await asyncio.gather(*waiting[:2], return_exceptions=True)
        await asyncio.wait_for(waiting[2], 1)  # so the third gets it
        await window.__aexit__()
        return window.free

    assert asyncio.run(main()) == 1
