#!/usr/bin/env python3
"""An independent check of batchyard's Bedrock SigV4: botocore's signer against ours.

1. Known answer: botocore's SigV4Auth (service "bedrock") signs the exact request that
   workers/src/provider/bedrock/sign.rs's test signs (a model id with ':', a fixed time);
   the signature must equal the one that test pins.
2. The fake agrees: botocore signs a Converse call to the fake provider (`--bedrock-secret`),
   once right and once with a wrong secret; the fake must answer 200 and 403
   InvalidSignatureException.

Usage: bedrock_sigv4_check.py [FAKE_BASE_URL ACCESS_KEY_ID SECRET]
Exit 0 when every check passes, 1 on a mismatch, 2 when botocore is missing.
"""

import datetime
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from unittest import mock

try:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:
    print("botocore is missing: python3 -m pip install botocore", file=sys.stderr)
    sys.exit(2)

MODEL = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
# The request and answer pinned in sign.rs's
# the_signature_matches_botocore_for_a_model_id_with_a_colon.
KNOWN_BODY = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
KNOWN_TIME = datetime.datetime(2023, 11, 14, 22, 13, 20)
KNOWN_SIGNATURE = "3fe350d41fc5c1d341b5c3da147192aff09282849d822000283fe41f3b79bf02"


def converse_url(base, model):
    # botocore's rest-json serializer: a (non-greedy) label is quoted with safe=''.
    return f"{base.rstrip('/')}/model/{urllib.parse.quote(model, safe='')}/converse"


def signed(url, body, key_id, secret, when=None):
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    signer = SigV4Auth(Credentials(key_id, secret), "bedrock", "us-east-1")
    if when is None:
        signer.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(request)
    return request


def known_answer():
    url = converse_url("http://127.0.0.1:8080", MODEL)
    request = signed(
        url, KNOWN_BODY, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", KNOWN_TIME
    )
    signature = request.headers["Authorization"].rsplit("=", 1)[1]
    if signature != KNOWN_SIGNATURE:
        print(f"known answer: botocore signs {signature}, sign.rs pins {KNOWN_SIGNATURE}")
        return False
    print(f"known answer: botocore agrees with sign.rs ({signature[:16]}...)")
    return True


def send(request):
    prepared = request.prepare()
    http = urllib.request.Request(
        prepared.url, data=prepared.body, headers=dict(prepared.headers), method="POST"
    )
    try:
        with urllib.request.urlopen(http, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def against_fake(base, key_id, secret):
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hello"}]}]})
    url = converse_url(base, MODEL)
    status, answer = send(signed(url, body.encode(), key_id, secret))
    if status != 200 or "output" not in answer:
        print(f"fake: botocore's signed request got {status} {answer}")
        return False
    status, answer = send(signed(url, body.encode(), key_id, secret + "x"))
    if status != 403 or "signature" not in json.dumps(answer).lower():
        print(f"fake: a wrong secret got {status} {answer}, not 403 InvalidSignatureException")
        return False
    print("fake: accepts botocore's signature and refuses a wrong one")
    return True


def main():
    ok = known_answer()
    if len(sys.argv) == 4:
        ok = against_fake(*sys.argv[1:4]) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
