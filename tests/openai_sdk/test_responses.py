"""The official `openai` Python package against the server's Responses API (/v1/responses).

Run by tests/api/sdk.rs, which starts the daemon (with the fake CLI) and passes
CCS_OPENAI_BASE_URL (http://127.0.0.1:PORT/v1), CCS_OPENAI_API_KEY and CCS_OPENAI_MODEL. Plain
asserts; every test_* function runs in order, and the first failure exits non-zero with its
traceback.
"""

import os
import sys

import openai
from openai import OpenAI

# The helpers the SDK scripts share, one directory up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sdk_common import expect_raises, native_get as _native_get, run_tests  # noqa: E402

BASE_URL = os.environ["CCS_OPENAI_BASE_URL"]
API_KEY = os.environ["CCS_OPENAI_API_KEY"]
MODEL = os.environ.get("CCS_OPENAI_MODEL", "claude-sonnet-4-5")

# No retries: a retried 5xx would be a second run, and the tests count runs by their replies.
client = OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=60)


def native_get(path):
    root = BASE_URL[: -len("/v1")]
    return _native_get(root + path, {"Authorization": f"Bearer {API_KEY}"})


def test_create():
    r = client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input="hello",
        max_output_tokens=64,
        metadata={"k": "v"},
    )
    assert r.object == "response" and r.status == "completed", r
    assert r.id.startswith("resp_"), r.id
    assert r.model == MODEL, r.model
    assert r.output_text == "fake reply #1 to: hello", r.output_text
    assert r.instructions == "Be brief.", r.instructions
    assert r.metadata == {"k": "v"}, r.metadata
    u = r.usage
    assert u.input_tokens > 0 and u.output_tokens > 0, u
    assert u.total_tokens == u.input_tokens + u.output_tokens, u
    task = native_get("/api/tasks/" + r.id[len("resp_"):])["task"]
    assert task["status"] == "completed" and task["metadata"] == {"k": "v"}, task


def test_stream():
    with client.responses.stream(
        model=MODEL, input="[[fake:chunks=4]] [[fake:chunk_ms=10]] stream me"
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "fake reply #1 to: stream me", deltas
    assert len(deltas) >= 2, deltas
    assert final.output_text == "fake reply #1 to: stream me", final
    assert final.status == "completed" and final.usage.total_tokens > 0, final

    kinds = [e.type for e in client.responses.create(model=MODEL, input="raw", stream=True)]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] == "response.completed", kinds
    assert "response.output_text.delta" in kinds, kinds


def test_messages_input():
    r = client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Speak English."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "4"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "And times 3?"}]},
        ],
    )
    folded = (
        "<conversation_history>\n<user>\nWhat is 2+2?\n</user>\n<assistant>\n4\n</assistant>\n"
        "</conversation_history>\n\nAnd times 3?"
    )
    assert r.output_text == "fake reply #1 to: " + folded, r.output_text
    assert r.instructions == "Speak English.", r.instructions


def test_previous_response_id():
    first = client.responses.create(model=MODEL, input="first")
    second = client.responses.create(model=MODEL, input="second", previous_response_id=first.id)
    # The model saw two turns...
    assert second.output_text == "fake reply #2 to: second", second.output_text
    assert second.previous_response_id == first.id
    # ...and the first prompt: the session's first message.
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="third", previous_response_id=second.id
    )
    sid = raw.headers["x-session-id"]
    assert raw.parse().output_text == "fake reply #3 to: third"
    messages = native_get(f"/api/sessions/{sid}/messages")["messages"]
    users = [m["content"] for m in messages if m["type"] == "text" and m["role"] == "user"]
    assert users == ["first", "second", "third"], users
    # A stream continues it too.
    with client.responses.stream(model=MODEL, input="fourth", previous_response_id=first.id) as s:
        s.until_done()
        assert s.get_final_response().output_text == "fake reply #4 to: fourth"

    e = expect_raises(openai.NotFoundError, lambda: client.responses.create(
        model=MODEL, input="x", previous_response_id="resp_0123456789abcdef0123456789abcdef"))
    assert e.status_code == 404 and e.param == "previous_response_id", (e.status_code, e.param)


def test_errors():
    e = expect_raises(openai.BadRequestError, lambda: client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}],
    ))
    assert e.type == "invalid_request_error" and e.param == "input[0].content[1]", (e.type, e.param)
    e = expect_raises(openai.InternalServerError, lambda: client.responses.create(
        model=MODEL, input="[[fake:api_error=500]] x"))
    assert e.status_code == 502 and e.code == "cli_api_error", (e.status_code, e.code)
    # After the stream began: `response.failed`, its error the service's.
    events = list(client.responses.create(model=MODEL, input="[[fake:api_error=529]] x", stream=True))
    assert events[-1].type == "response.failed", [e.type for e in events]
    assert events[-1].response.error.code == "cli_api_error", events[-1].response.error


if __name__ == "__main__":
    run_tests(globals(), "openai", openai.__version__)
