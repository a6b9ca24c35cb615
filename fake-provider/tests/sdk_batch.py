"""The official SDKs against the fake provider's batch APIs (run by tests/batch_sdk.rs).

OpenAI (`openai`): files.create / batches.create / retrieve / list / cancel, files.content,
files.list and files.delete, every batch object validated against the SDK's `Batch` model. Anthropic
(`anthropic`, when installed): messages.batches.create / retrieve / results / list / cancel.
Env: FAKE_URL (http://127.0.0.1:PORT), FAKE_KEY. Exit 77 when the openai package is missing.
"""

import json
import os
import sys
import time

try:
    import openai
    from openai.types import Batch
except ImportError:
    print("sdk_batch: no openai package")
    sys.exit(77)

URL, KEY = os.environ["FAKE_URL"], os.environ["FAKE_KEY"]


def wait(get, done, secs=10.0):
    """Polls get() until done(it), at most secs."""
    deadline = time.monotonic() + secs
    while True:
        it = get()
        if done(it):
            return it
        assert time.monotonic() < deadline, f"still not done after {secs}s: {it}"
        time.sleep(0.05)


def line(custom_id, text):
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "gpt-fake", "messages": [{"role": "user", "content": text}]}})


def check_openai():
    client = openai.OpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0, timeout=10)
    data = "\n".join([line("a", "first"), line("b", "second"), line("c", "FAKE:CONTEXT")])
    f = client.files.create(file=("input.jsonl", data.encode()), purpose="batch")
    assert f.purpose == "batch" and f.bytes == len(data), f
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"batchyard_batch": "sdk"})
    assert b.status == "validating" and b.metadata == {"batchyard_batch": "sdk"}, b

    def raw(batch_id):
        # The wire JSON, validated strictly (the SDK's own parse is lenient).
        return Batch.model_validate(client.batches.with_raw_response.retrieve(batch_id).http_response.json())

    done = wait(lambda: raw(b.id), lambda x: x.status == "completed")
    assert client.batches.retrieve(b.id).status == "completed"
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (3, 2, 1), counts
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    err = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["a", "b"], out
    assert err[0]["custom_id"] == "c" and err[0]["response"]["status_code"] == 400, err
    assert done.usage is not None and done.usage.input_tokens > 0, done

    slow = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")
    cancelling = client.batches.cancel(slow.id)
    assert cancelling.status == "cancelling", cancelling
    wait(lambda: raw(slow.id), lambda x: x.status == "cancelled")
    page = client.batches.list(limit=1)
    assert [x.id for x in page.data] == [slow.id] and page.has_more, page
    assert [x.id for x in client.batches.list(limit=10)] == [slow.id, b.id]
    assert [x.id for x in client.files.list(purpose="batch")] == [f.id]
    assert client.files.delete(f.id).deleted
    print(f"sdk_batch: openai {openai.__version__} ok")


def check_anthropic():
    try:
        import anthropic
    except ImportError:
        print("sdk_batch: no anthropic package, its check skipped")
        return
    # Recent SDKs (2.x) send the key as `Authorization: Bearer`; the fake's Anthropic dialect
    # checks `x-api-key`, as the API documents it, so it is sent too.
    client = anthropic.Anthropic(base_url=URL, api_key=KEY, max_retries=0, timeout=10,
                                 default_headers={"x-api-key": KEY})
    requests = [{"custom_id": f"r{i}", "params": {"model": "claude-fake", "max_tokens": 64,
                 "messages": [{"role": "user", "content": f"question {i}"}]}} for i in range(3)]
    b = client.messages.batches.create(requests=requests)
    assert b.processing_status == "in_progress" and b.request_counts.processing == 3, b
    done = wait(lambda: client.messages.batches.retrieve(b.id), lambda x: x.processing_status == "ended")
    assert done.request_counts.succeeded == 3 and done.results_url, done
    results = list(client.messages.batches.results(b.id))
    assert sorted(r.custom_id for r in results) == ["r0", "r1", "r2"], results
    assert all(r.result.type == "succeeded" and r.result.message.content[0].text for r in results)
    other = client.messages.batches.create(requests=requests)
    assert client.messages.batches.cancel(other.id).processing_status == "canceling"
    listed = [x.id for x in client.messages.batches.list(limit=10)]
    assert listed == [other.id, b.id], listed
    print(f"sdk_batch: anthropic {anthropic.__version__} ok")


check_openai()
check_anthropic()
