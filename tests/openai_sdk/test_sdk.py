"""The official `openai` Python package against the server's /v1 API.

Run by tests/api/openai_sdk.rs, which starts the daemon (with the fake CLI) and passes
CCS_OPENAI_BASE_URL (http://127.0.0.1:PORT/v1) and CCS_OPENAI_API_KEY. Plain asserts; every
test_* function runs in order, and the first failure exits non-zero with its traceback.
"""

import os
import sys

import openai
from openai import OpenAI

# The helpers the SDK scripts share, one directory up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sdk_common import expect_raises, run_tests  # noqa: E402

BASE_URL = os.environ["CCS_OPENAI_BASE_URL"]
API_KEY = os.environ["CCS_OPENAI_API_KEY"]
MODEL = os.environ.get("CCS_OPENAI_MODEL", "claude-sonnet-4-5")

# No retries: a retried 5xx would be a second run, and the tests count runs by their replies.
client = OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=60)


def test_models():
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids, ids
    assert client.models.retrieve(MODEL).owned_by == "anthropic"
    e = expect_raises(openai.NotFoundError, lambda: client.models.retrieve("no-such-model"))
    assert e.status_code == 404


def test_non_stream():
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ],
        temperature=0.2,
        max_tokens=64,
        user="sdk-user",
    )
    assert r.object == "chat.completion", r
    assert r.id.startswith("chatcmpl-"), r.id
    assert r.model == MODEL, r.model
    assert len(r.choices) == 1
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "fake reply #1 to: hello", r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    u = r.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    assert (r.model_extra or {}).get("session_id"), r


def test_stream():
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "[[fake:chunks=4]] [[fake:chunk_ms=10]] stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, finish, usage, ids = [], None, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
        if chunk.usage:
            usage = chunk.usage
    assert "".join(deltas) == "fake reply #1 to: stream me", deltas
    assert len(deltas) >= 2, deltas
    assert finish == "stop"
    assert usage is not None and usage.total_tokens > 0, usage
    assert len(ids) == 1, ids


def test_two_turns_by_session():
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "first"}]
    )
    sid = raw.headers["x-session-id"]
    first = raw.parse()
    assert first.choices[0].message.content == "fake reply #1 to: first"
    assert first.model_extra["session_id"] == sid
    second = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "second"}],
        extra_headers={"X-Session-Id": sid},
    )
    assert second.choices[0].message.content == "fake reply #2 to: second", second
    third = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "third"}],
        extra_body={"session_id": sid},
    )
    assert third.choices[0].message.content == "fake reply #3 to: third", third
    assert third.model_extra["session_id"] == sid


def test_bad_request():
    e = expect_raises(
        openai.BadRequestError,
        lambda: client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
        ),
    )
    assert e.status_code == 400
    assert e.type == "invalid_request_error", e.type
    assert e.code == "validation_error", e.code
    assert e.param == "messages[0].content[1]", e.param


def test_cli_failure():
    e = expect_raises(
        openai.InternalServerError,
        lambda: client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "[[fake:api_error=500]] x"}]
        ),
    )
    assert e.status_code == 502 and e.code == "cli_api_error", (e.status_code, e.code)

    def consume():
        for _ in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "[[fake:api_error=529]] x"}],
            stream=True,
        ):
            pass

    e = expect_raises(openai.APIError, consume)
    assert e.code == "cli_api_error", e.code


def test_wrong_key():
    bad = OpenAI(base_url=BASE_URL, api_key="sk-wrong", max_retries=0)
    e = expect_raises(openai.AuthenticationError, lambda: bad.models.list())
    assert e.status_code == 401


if __name__ == "__main__":
    run_tests(globals(), "openai", openai.__version__)
