import asyncio
import threading

import numpy as np
import pytest

from serving.batching import Batcher


def fake_predict(calls):
    def predict(images):
        calls.append(len(images))
        threading.Event().wait(0.01)  # a model that takes a while, as onnxruntime does
        sums = images.reshape(len(images), -1).sum(axis=1)
        return np.repeat(sums[:, None], 10, axis=1), sums.astype(np.int64)

    return predict


def test_concurrent_requests_share_calls_and_get_their_own_answers():
    calls = []

    async def main():
        batcher = Batcher(fake_predict(calls), max_batch_size=16)
        batcher.start()
        requests = [np.full((1 + i % 3, 28, 28, 1), i, np.float32) for i in range(40)]
        answers = await asyncio.gather(*(batcher.infer(images) for images in requests))
        await batcher.stop()
        return requests, answers

    requests, answers = asyncio.run(main())
    for images, (probabilities, labels) in zip(requests, answers):
        assert labels.tolist() == [images[0].sum()] * len(images)
        assert probabilities.shape == (len(images), 10)
    assert sum(calls) == sum(len(images) for images in requests)
    assert len(calls) < 40 and max(calls) <= 16  # batched, never past the limit


def test_a_request_larger_than_the_batch_runs_alone():
    calls = []

    async def main():
        batcher = Batcher(fake_predict(calls), max_batch_size=4)
        batcher.start()
        await asyncio.gather(
            batcher.infer(np.zeros((10, 28, 28, 1), np.float32)), batcher.infer(np.zeros((1, 28, 28, 1), np.float32))
        )
        await batcher.stop()

    asyncio.run(main())
    assert sorted(calls) == [1, 10]


def test_a_failing_model_fails_the_waiting_requests_and_keeps_serving():
    outcomes = []

    def predict(images):
        if images.max() > 0:
            raise RuntimeError("model failed")
        return np.zeros((len(images), 10)), np.zeros(len(images), np.int64)

    async def main():
        batcher = Batcher(predict, max_batch_size=1)
        batcher.start()
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.infer(np.ones((1, 28, 28, 1), np.float32))
        outcomes.append(await batcher.infer(np.zeros((1, 28, 28, 1), np.float32)))
        await batcher.stop()

    asyncio.run(main())
    assert outcomes[0][1].tolist() == [0]


def test_a_lone_image_runs_in_the_event_loop_and_a_batch_in_a_worker_thread():
    threads = []

    def predict(images):
        threads.append((len(images), threading.current_thread() is threading.main_thread()))
        return np.zeros((len(images), 10)), np.zeros(len(images), np.int64)

    async def main():
        batcher = Batcher(predict, max_batch_size=8)
        batcher.start()
        await batcher.infer(np.zeros((1, 28, 28, 1), np.float32))  # alone: no thread to wake
        await batcher.infer(np.zeros((3, 28, 28, 1), np.float32))  # several images: the loop keeps reading
        await batcher.stop()

    asyncio.run(main())
    assert threads == [(1, True), (3, False)]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        Batcher(lambda images: None, max_batch_size=0)
