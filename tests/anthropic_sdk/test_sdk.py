"""The official `anthropic` Python package against the server's /v1/messages and /v1/models.

Run by tests/api/sdk.rs, which starts the daemon (with the fake CLI) and passes
CCS_ANTHROPIC_BASE_URL (http://127.0.0.1:PORT, the SDK adds /v1), CCS_ANTHROPIC_API_KEY and
CCS_ANTHROPIC_MODEL. Plain asserts; every test_* function runs in order, and the first failure
exits non-zero with its traceback.
"""

import os
import sys

import anthropic
from anthropic import Anthropic

# The helpers the SDK scripts share, one directory up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sdk_common import expect_raises, native_get as _native_get, run_tests  # noqa: E402

BASE_URL = os.environ["CCS_ANTHROPIC_BASE_URL"]
API_KEY = os.environ["CCS_ANTHROPIC_API_KEY"]
MODEL = os.environ.get("CCS_ANTHROPIC_MODEL", "claude-sonnet-4-5")

# No retries: a retried 5xx would be a second run, and the tests count runs by their replies.
# `api_key` is sent as `x-api-key`, as to Anthropic's API.
client = Anthropic(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=60)


def native_get(path):
    return _native_get(BASE_URL + path, {"X-API-Key": API_KEY})


def user(text):
    return {"role": "user", "content": text}


def test_models():
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert MODEL in ids, ids
    assert all(m.type == "model" for m in models), models
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.display_name and m.created_at, m
    e = expect_raises(anthropic.NotFoundError, lambda: client.models.retrieve("no-such-model"))
    assert e.status_code == 404 and e.type == "not_found_error", (e.status_code, e.type)


def test_create():
    r = client.messages.create(
        model=MODEL,
        max_tokens=64,
        system="Be brief.",
        messages=[user("hello")],
        stop_sequences=["END"],
        metadata={"user_id": "sdk-user"},
    )
    assert r.type == "message" and r.role == "assistant", r
    assert r.id.startswith("msg_"), r.id
    assert r.model == MODEL, r.model
    assert [b.type for b in r.content] == ["text"], r.content
    assert r.content[0].text == "fake reply #1 to: hello", r.content
    assert r.stop_reason == "end_turn" and r.stop_sequence is None, r
    u = r.usage
    assert u.input_tokens > 0 and u.output_tokens > 0, u
    assert u.cache_read_input_tokens == 0 and u.cache_creation_input_tokens == 0, u
    # A task like any other, its id inside the message's.
    task = native_get("/api/tasks/" + r.id[len("msg_"):])["task"]
    assert task["status"] == "completed" and task["metadata"] == {"user_id": "sdk-user"}, task


def test_system_in_both_forms():
    # `model_echo`: the fake puts the flags it received into its reply.
    for system in ["Be brief.", [{"type": "text", "text": "Be brief."}]]:
        r = client.messages.create(
            model=MODEL,
            max_tokens=64,
            system=system,
            messages=[user("[[fake:model_echo]] hi")],
        )
        text = r.content[0].text
        assert "Be brief." in text and "append-system-prompt" in text, text


def test_stream():
    with client.messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=[user("[[fake:chunks=4]] [[fake:chunk_ms=10]] stream me")],
    ) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(deltas) == "fake reply #1 to: stream me", deltas
    assert len(deltas) >= 2, deltas
    assert [b.text for b in final.content] == ["fake reply #1 to: stream me"], final.content
    assert final.stop_reason == "end_turn", final
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0, final.usage
    assert final.id.startswith("msg_"), final.id

    # The raw events, as they come.
    kinds = [e.type for e in client.messages.create(
        model=MODEL, max_tokens=64, messages=[user("raw")], stream=True
    )]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"], kinds
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(kinds), kinds


def test_blocks_and_history():
    r = client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            user([{"type": "text", "text": "What is 2+2?"}]),
            {"role": "assistant", "content": [{"type": "text", "text": "4"}]},
            user([{"type": "text", "text": "And times"}, {"type": "text", "text": "3?"}]),
        ],
    )
    folded = (
        "<conversation_history>\n<user>\nWhat is 2+2?\n</user>\n<assistant>\n4\n</assistant>\n"
        "</conversation_history>\n\nAnd times\n3?"
    )
    assert r.content[0].text == "fake reply #1 to: " + folded, r.content[0].text


def test_session_continuation():
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=[user("first")]
    )
    sid = raw.headers["x-session-id"]
    assert raw.parse().content[0].text == "fake reply #1 to: first"
    second = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        # The client resends the whole conversation; only the last message reaches the CLI.
        messages=[user("first"), {"role": "assistant", "content": "fake reply #1 to: first"},
                  user("second")],
        extra_headers={"X-Session-Id": sid},
    )
    assert second.headers["x-session-id"] == sid
    # The model saw two turns...
    assert second.parse().content[0].text == "fake reply #2 to: second", second.parse()
    # ...and the first prompt is the session's first message.
    texts = [(m["role"], m["content"]) for m in native_get(f"/api/sessions/{sid}/messages")["messages"]
             if m["type"] == "text"]
    users = [t for r, t in texts if r == "user"]
    assert users == ["first", "second"], texts
    # A stream continues it too.
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[user("third")], extra_headers={"X-Session-Id": sid}
    ) as stream:
        assert stream.response.headers["x-session-id"] == sid
        assert "".join(stream.text_stream) == "fake reply #3 to: third"


def test_auth():
    # x-api-key, as the SDK sends it, is what every call above used; a bearer token works too.
    bearer = Anthropic(base_url=BASE_URL, api_key=None, auth_token=API_KEY, max_retries=0)
    assert MODEL in [m.id for m in bearer.models.list()]
    bad = Anthropic(base_url=BASE_URL, api_key="sk-ant-wrong", max_retries=0)
    e = expect_raises(anthropic.AuthenticationError, lambda: bad.messages.create(
        model=MODEL, max_tokens=8, messages=[user("hi")]))
    assert e.status_code == 401 and e.type == "authentication_error", (e.status_code, e.type)
    assert e.error_code == "unauthorized", e.error_code


def test_error_types():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    e = expect_raises(anthropic.BadRequestError, lambda: client.messages.create(
        model=MODEL, max_tokens=8, messages=[user([{"type": "text", "text": "what is this?"}, image])]))
    assert e.type == "invalid_request_error" and e.error_code == "validation_error", (e.type, e.error_code)
    assert "messages[0].content[1]" in e.api_message and "image" in e.api_message, e.api_message

    e = expect_raises(anthropic.NotFoundError, lambda: client.messages.create(
        model="claude-no-such-model", max_tokens=8, messages=[user("hi")]))
    assert e.type == "not_found_error", e.type

    # The model API overloaded behind the CLI: a 502 of type overloaded_error.
    e = expect_raises(anthropic.InternalServerError, lambda: client.messages.create(
        model=MODEL, max_tokens=8, messages=[user("[[fake:api_error=529]] x")]))
    assert e.status_code == 502 and e.type == "overloaded_error", (e.status_code, e.type)
    assert e.error_code == "cli_api_error", e.error_code

    # After a stream began: the `error` event, raised.
    def consume():
        with client.messages.stream(
            model=MODEL, max_tokens=8, messages=[user("[[fake:api_error=500]] x")]
        ) as stream:
            for _ in stream:
                pass

    e = expect_raises(anthropic.APIStatusError, consume)
    assert e.type == "api_error" and e.error_code == "cli_api_error", (e.type, e.error_code)


if __name__ == "__main__":
    run_tests(globals(), "anthropic", anthropic.__version__)
