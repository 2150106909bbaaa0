"""openai-python 0.27.8 (what chatgpt-on-wechat pins) against the gateway: every case of
cases.json with ``openai.ChatCompletion.create`` stream and not, and ``openai.Image.create``.
Run by tests/e2e/test_clients.py in .clients/openai027: ``python drive_openai027.py BASE KEYPREFIX``;
prints one JSON object {"<case>/<mode>": result}."""

import json
import os
import sys

import openai

HERE = os.path.dirname(os.path.abspath(__file__))


def error(e):
    return {"error_type": type(e).__name__, "error_message": str(e), "status": getattr(e, "http_status", None)}


def main(base, prefix):
    with open(os.path.join(HERE, "cases.json"), encoding="utf-8") as f:
        spec = json.load(f)
    openai.api_base = base + "/v1"
    out = {}
    for case, messages in spec["cases"].items():
        key = "%s-%s" % (prefix, case)
        try:
            r = openai.ChatCompletion.create(model=spec["model"], messages=messages, api_key=key, request_timeout=20)
            out[case + "/plain"] = {"content": r["choices"][0]["message"]["content"],
                                    "finish_reason": r["choices"][0]["finish_reason"],
                                    "completion_tokens": r["usage"]["completion_tokens"], "model": r["model"]}
        except Exception as e:
            out[case + "/plain"] = error(e)
        try:
            parts, finish = [], None
            for chunk in openai.ChatCompletion.create(model=spec["model"], messages=messages, api_key=key,
                                                      stream=True, request_timeout=20):
                choice = chunk["choices"][0] if chunk["choices"] else {}
                parts.append(choice.get("delta", {}).get("content") or "")
                finish = choice.get("finish_reason") or finish
            out[case + "/stream"] = {"content": "".join(parts), "finish_reason": finish}
        except Exception as e:
            out[case + "/stream"] = error(e)
    try:  # a base URL typed with a trailing slash: 0.27.8 then asks for /v1//chat/completions
        r = openai.ChatCompletion.create(model=spec["model"], messages=spec["cases"]["en"], api_key=prefix + "-slash",
                                         api_base=base + "/v1/", request_timeout=20)
        out["slash/plain"] = {"content": r["choices"][0]["message"]["content"]}
    except Exception as e:
        out["slash/plain"] = error(e)
    try:
        # as chatgpt-on-wechat calls it (model from its "text_to_image" setting)
        r = openai.Image.create(prompt=spec["image_prompt"], n=1, size="1024x1024", model="dall-e-3",
                                api_key=prefix + "-images", request_timeout=30)
        out["images/url"] = {"urls": [d["url"] for d in r["data"]]}
    except Exception as e:
        out["images/url"] = error(e)
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main(*sys.argv[1:3])
