"""LangChain's ``ChatOpenAI`` (langchain-openai) against the gateway: every case of cases.json
with ``invoke`` and ``stream``, the agent case built from LangChain's own message classes
(an ``AIMessage`` with ``tool_calls`` and a ``ToolMessage``). Run in .clients/langchain:
``python drive_langchain.py BASE KEYPREFIX``; prints one JSON object {"<case>/<mode>": result}."""

import json
import os
import sys

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_openai import ChatOpenAI

HERE = os.path.dirname(os.path.abspath(__file__))


def lc_messages(messages):
    out = []
    for m in messages:
        if m["role"] == "system":
            out.append(SystemMessage(m["content"]))
        elif m["role"] == "user":
            out.append(HumanMessage(m["content"]))
        elif m["role"] == "tool":
            out.append(ToolMessage(m["content"], tool_call_id=m["tool_call_id"]))
        else:
            calls = [{"id": c["id"], "name": c["function"]["name"], "args": json.loads(c["function"]["arguments"])}
                     for c in m.get("tool_calls") or []]
            out.append(AIMessage(m["content"] or "", tool_calls=calls))
    return out


def error(e):
    return {"error_type": type(e).__name__, "error_message": str(e), "status": getattr(e, "status_code", None),
            "error_classes": [c.__name__ for c in type(e).__mro__]}


def main(base, prefix):
    with open(os.path.join(HERE, "cases.json"), encoding="utf-8") as f:
        spec = json.load(f)
    out = {}
    for case, messages in spec["cases"].items():
        llm = ChatOpenAI(model=spec["model"], base_url=base + "/v1", api_key="%s-%s" % (prefix, case),
                         max_retries=0, timeout=20)
        try:
            r = llm.invoke(lc_messages(messages))
            out[case + "/plain"] = {"content": r.content, "finish_reason": r.response_metadata.get("finish_reason"),
                                    "completion_tokens": (r.usage_metadata or {}).get("output_tokens")}
        except Exception as e:
            out[case + "/plain"] = error(e)
        try:
            parts = [chunk.content for chunk in llm.stream(lc_messages(messages))]
            out[case + "/stream"] = {"content": "".join(p for p in parts if isinstance(p, str))}
        except Exception as e:
            out[case + "/stream"] = error(e)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main(*sys.argv[1:3])
