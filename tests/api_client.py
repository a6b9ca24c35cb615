#!/usr/bin/env python3
"""The official `openai` package, unchanged, against `batchyard serve`.

Run by tests/api.rs (official_openai_python_client) with:
  BATCHYARD_API_BASE        http://127.0.0.1:PORT/v1
  BATCHYARD_API_TOKEN       a token from the server's BATCHYARD_API_TOKENS
  BATCHYARD_API_INPUT       a small JSONL of chat requests (custom ids are checked)
  BATCHYARD_API_SLOW_INPUT  a larger JSONL, slow enough to cancel while it runs
or, with BATCHYARD_API_VALIDATE_ONLY=1, only checks that every batch object the server lists
and retrieves validates against the SDK's `Batch` model, and prints "api_client: validated N".

Exit 0 and print "api_client: ok" on success. Without the `openai` package: exit 77 (the
Rust test skips) outside CI, exit 1 under CI=true, where it must be installed.
"""

import json
import os
import sys
import time

try:
    import openai
except ImportError:
    if os.environ.get("CI") in ("true", "1"):
        print("api_client: the openai package is missing under CI; scripts/test installs it")
        sys.exit(1)
    print("the openai package is not installed; run `python3 -m pip install openai`")
    sys.exit(77)

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def wait(client, batch_id, limit=90.0):
    deadline = time.monotonic() + limit
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.3)


def validate_all(client):
    """Every batch, listed and retrieved, parsed strictly: the SDK's own responses skip
    validation, so a null required field would only show up in a user's model_validate."""
    from openai.types import Batch

    listed = client.batches.with_raw_response.list(limit=100).http_response.json()
    seen = 0
    for raw in listed["data"]:
        Batch.model_validate(raw)
        one = client.batches.with_raw_response.retrieve(raw["id"]).http_response.json()
        batch = Batch.model_validate(one)
        if batch.status in TERMINAL and batch.status != "failed":
            assert batch.usage is not None, one
            assert batch.usage.total_tokens == (
                batch.usage.input_tokens + batch.usage.output_tokens
            ), one
        seen += 1
    print(f"api_client: validated {seen}")


def main():
    base = os.environ["BATCHYARD_API_BASE"]
    token = os.environ["BATCHYARD_API_TOKEN"]
    client = openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=60)
    if os.environ.get("BATCHYARD_API_VALIDATE_ONLY") == "1":
        validate_all(client)
        return

    # Authentication errors come back as the client's own exception type.
    try:
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).batches.list()
        raise AssertionError("a wrong token was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401

    # Upload, then run a batch to completion.
    path = os.environ["BATCHYARD_API_INPUT"]
    with open(path, "rb") as f:
        expected = sorted(json.loads(line)["custom_id"] for line in f if line.strip())
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    assert uploaded.id.startswith("file-"), uploaded
    assert uploaded.bytes == os.path.getsize(path), uploaded
    assert client.files.retrieve(uploaded.id).filename == os.path.basename(path)

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"suite": "api_client"},
    )
    assert batch.metadata == {"suite": "api_client"}, batch
    done = wait(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == len(expected), done
    assert done.request_counts.completed == len(expected), done
    text = client.files.content(done.output_file_id).text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert sorted(line["custom_id"] for line in lines) == expected, text
    assert all(line["response"]["status_code"] == 200 for line in lines), text

    # Cancel a batch while it runs.
    with open(os.environ["BATCHYARD_API_SLOW_INPUT"], "rb") as f:
        slow_file = client.files.create(file=f, purpose="batch")
    slow = client.batches.create(
        input_file_id=slow_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    cancelling = client.batches.cancel(slow.id)
    assert cancelling.status in ("cancelling", "cancelled"), cancelling
    cancelled = wait(client, slow.id)
    assert cancelled.status == "cancelled", cancelled
    assert cancelled.cancelled_at is not None, cancelled
    assert cancelled.request_counts.completed < cancelled.request_counts.total, cancelled
    try:
        client.batches.cancel(slow.id)
        raise AssertionError("a finished batch was cancelled again")
    except openai.BadRequestError as e:
        assert e.status_code == 400

    # Auto-pagination over pages of one, newest first.
    page = client.batches.list(limit=1)
    assert len(page.data) == 1 and page.has_more, page
    ids = [b.id for b in client.batches.list(limit=1)]
    assert ids[:2] == [slow.id, batch.id], ids

    # Unknown ids and deletes.
    try:
        client.batches.retrieve("batch_does_not_exist")
        raise AssertionError("an unknown batch was found")
    except openai.NotFoundError:
        pass
    assert client.files.delete(uploaded.id).deleted is True
    try:
        client.files.retrieve(uploaded.id)
        raise AssertionError("a deleted file was found")
    except openai.NotFoundError:
        pass

    print(f"api_client: ok (openai {openai.__version__})")


if __name__ == "__main__":
    main()
