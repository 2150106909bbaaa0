"""The shortest path a newcomer takes: the openai SDK against the gateway, stream and not."""


def test_chat_non_stream_and_stream_give_the_same_text(gateway, upstream, key):
    client = gateway.client(key)
    expected = "你好！这是演示上游的回答。Hello from the demo upstream: you said “你好”."
    done = client.chat.completions.create(model="gpt-4-s", messages=[{"role": "user", "content": "你好"}])
    assert done.choices[0].message.content == expected
    assert done.choices[0].finish_reason == "stop"

    chunks = list(client.chat.completions.create(model="gpt-4-s", stream=True,
                                                 messages=[{"role": "user", "content": "你好"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
