"""A local fake of the Hugging Face Hub's HTTP API on 127.0.0.1: the endpoints
`huggingface_hub` calls for `create_repo` and `create_commit` (read from its sources:
`hf_api.py` `create_repo` / `_validate_yaml`, `_commit_api.py` `_fetch_upload_modes` /
`_send_commit`). Every file is accepted as a "regular" upload, so the commit carries the
files inline (base64 in the ndjson payload) and no LFS or Xet storage is involved.
Point `HF_ENDPOINT` at `hub.url`."""

from __future__ import annotations

import base64
import json
import re
from http.server import BaseHTTPRequestHandler

from tests.local_http import LoopbackServer


class FakeHub(LoopbackServer):
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        """repo id -> {"private": bool, "files": {path: bytes}, "commits": [message]}"""
        self.requests: list[tuple[str, str, dict, bytes]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, code: int, data: dict) -> None:
                body = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, dict(self.headers), raw))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    p = json.loads(raw)
                    repo = f"{p['organization']}/{p['name']}" if p.get("organization") else p["name"]
                    if repo in hub.repos:
                        return self._reply(409, {"error": "You already created this model repo", "url": hub.url + "/" + repo})
                    hub.repos[repo] = {"private": p.get("visibility") == "private" or p.get("private") is True,
                                       "files": {}, "commits": []}
                    return self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": repo})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                m = re.fullmatch(r"/api/models/(.+?)/preupload/(.+)", path)
                if m:
                    files = json.loads(raw)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                m = re.fullmatch(r"/api/models/(.+?)/commit/(.+)", path)
                if m and m.group(1) in hub.repos:
                    repo = hub.repos[m.group(1)]
                    for line in raw.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "header":
                            repo["commits"].append(item["value"]["summary"])
                        elif item["key"] == "file":
                            repo["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self._reply(200, {"commitUrl": f"{hub.url}/{m.group(1)}/commit/{'0' * 40}",
                                             "commitOid": "0" * 40, "pullRequestUrl": None})
                return self._reply(404, {"error": f"fake hub: no endpoint {path}"})

            def log_message(self, *args):
                pass

        self.serve(Handler)
