"""A webhook receiver for tests/notify.rs, checking each delivery with the Standard Webhooks
reference library (PyPI `standardwebhooks`), not with batchyard's own code.

Usage: webhook_receiver.py SECRET FAIL_FIRST LOG
Listens on 127.0.0.1 (a free port, printed as `listening PORT`), answers the first
FAIL_FIRST deliveries 500 and the rest 204, and appends one JSON line per delivery to LOG:
{"id", "timestamp", "verified", "status", "event"}. Exits 2 when the library is missing.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError:
    print("standardwebhooks is missing (python3 -m pip install standardwebhooks)", file=sys.stderr)
    sys.exit(2)

SECRET, FAIL_FIRST, LOG = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = {"n": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            Webhook(SECRET).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        seen["n"] += 1
        status = 500 if seen["n"] <= FAIL_FIRST else 204
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps({
                "id": headers.get("webhook-id"),
                "timestamp": headers.get("webhook-timestamp"),
                "verified": verified,
                "status": status,
                "event": event,
            }) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
