"""Dynamic batching: concurrent requests share one onnxruntime call.

One onnxruntime call runs at a time, in a worker thread, so the event loop keeps
reading requests meanwhile; the next call takes every request that queued up, up to
`max_batch_size` images (a single larger request runs on its own). Under load the
batches grow by themselves; `max_wait_ms` (default 0: no added latency) makes the first
request of a batch wait that long for company. A lone image with nothing queued behind it
runs in the event loop itself: no thread to wake and wait for (at concurrency 1, p50 and
p99 latency about a fifth lower; docs/BENCHMARKS.md).
"""

import asyncio
import time
from collections.abc import Callable

import numpy as np


class Batcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        max_batch_size: int = 64,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size must be at least 1 and max_wait_ms at least 0")
        self.predict, self.max_batch_size, self.max_wait = predict, max_batch_size, max_wait_ms / 1000
        self.on_batch = on_batch or (lambda size: None)
        self.queue = asyncio.Queue()
        self.worker = None

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.worker:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)

    async def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and labels for `images` [n, 28, 28, 1], computed in some batch."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((images, future))
        return await future

    async def _run(self):
        carried = None  # a request that did not fit the last batch starts the next one
        while True:
            waiting = [carried or await self.queue.get()]
            carried = None
            count = len(waiting[0][0])
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch_size:
                if self.queue.empty():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    await asyncio.sleep(min(remaining, 0.0005))  # let the event loop read more requests
                    continue
                images, future = self.queue.get_nowait()
                if count + len(images) > self.max_batch_size:
                    carried = (images, future)
                    break
                waiting.append((images, future))
                count += len(images)
            await self._run_batch(waiting, count)

    async def _run_batch(self, waiting, count):
        batch = waiting[0][0] if len(waiting) == 1 else np.concatenate([images for images, _ in waiting])
        self.on_batch(count)
        try:
            if count == 1 and self.queue.empty():  # a lone image: a fraction of a millisecond
                probabilities, labels = self.predict(batch)
            else:
                probabilities, labels = await asyncio.to_thread(self.predict, batch)
        except Exception as error:  # onnxruntime failed: every waiting request hears of it
            for _, future in waiting:
                if not future.done():
                    future.set_exception(error)
            return
        start = 0
        for images, future in waiting:
            if not future.done():  # a client that hung up has cancelled its future
                future.set_result((probabilities[start : start + len(images)], labels[start : start + len(images)]))
            start += len(images)
