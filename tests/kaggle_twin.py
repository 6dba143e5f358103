"""An offline twin of the Kaggle API: a loopback HTTP server speaking the wire format of the
endpoints the suite uses, for the real kaggle client. kagglesdk sends KAGGLE_API_ENVIRONMENT=TEST
requests to http://localhost:7777/api/v1/<service>/<method> (JSON POST, Bearer token).

Served: token introspection (authentication), submission upload (start, PUT of the file,
create), the submissions list (paged by token) and a dataset download (a zip). Switches make it
answer as Kaggle does when things go wrong: `refuse_upload` (the file PUT gets 403),
`reject_credentials` (every call 401) and `fail_with` (every call that status, e.g. 503).
"""
import datetime
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST, PORT = "localhost", 7777
TOKEN = "twin-token-0123456789abcdef"
USER = "twin-user"


class KaggleTwin:
    def __init__(self):
        self.submissions = []      # dicts, oldest first
        self.uploads = {}          # blob token -> bytes
        self.datasets = {}         # "owner/slug" -> zip bytes
        self.requests = []         # (method, path) of every call, for assertions
        self.refuse_upload = False
        self.reject_credentials = False
        self.fail_with = None

    # -- what a test sets up or reads -------------------------------------------------------
    def add_submission(self, competition, description, public_score=None):
        ref = len(self.submissions) + 1
        self.submissions.append({
            "competition": competition, "ref": ref, "description": description,
            "fileName": "submission.csv", "publicScore": public_score,
            "status": "COMPLETE" if public_score is not None else "PENDING",
            "date": (datetime.datetime(2026, 1, 1) + datetime.timedelta(minutes=ref))
            .isoformat(timespec="milliseconds") + "Z"})
        return ref

    def add_dataset(self, slug, files):
        """files: {path inside the zip: bytes}."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
        self.datasets[slug] = buffer.getvalue()

    # -- the API ------------------------------------------------------------------------------
    def handle(self, method, path, headers, body):
        """(status, content type, body bytes) for one request."""
        self.requests.append((method, path))
        if self.fail_with:
            return error(self.fail_with, "twin: failing on purpose")
        if method == "PUT" and path.startswith("/upload/"):
            if self.refuse_upload:
                return error(403, "upload refused")
            self.uploads[path.rsplit("/", 1)[1]] = body
            return 200, "application/json", b"{}"
        if self.reject_credentials or headers.get("Authorization") != f"Bearer {TOKEN}":
            return error(401, "Unauthenticated")
        request = json.loads(body or b"{}")
        name = path.removeprefix("/api/v1/")
        if name == "security.OAuthService/IntrospectToken":
            return ok({"active": request.get("token") == TOKEN, "username": USER})
        if name == "competitions.CompetitionApiService/StartSubmissionUpload":
            blob = f"blob-{len(self.uploads) + 1}-{request['fileName']}"
            return ok({"token": blob, "createUrl": f"http://{HOST}:{PORT}/upload/{blob}"})
        if name == "competitions.CompetitionApiService/CreateSubmission":
            blob = request.get("blobFileTokens")
            if blob not in self.uploads:
                return error(400, "no uploaded file for this submission")
            ref = self.add_submission(request["competitionName"],
                                      request.get("submissionDescription"))
            self.submissions[-1]["content"] = self.uploads[blob].decode()
            return ok({"message": f"Successfully submitted to {request['competitionName']}",
                       "ref": ref})
        if name == "competitions.CompetitionApiService/ListSubmissions":
            mine = [{k: v for k, v in s.items() if k not in ("competition", "content")}
                    for s in reversed(self.submissions)
                    if s["competition"] == request["competitionName"]]
            start, size = int(request.get("pageToken") or 0), int(request.get("pageSize") or 20)
            page = mine[start:start + size]
            more = start + size < len(mine)
            return ok({"submissions": [{k: v for k, v in s.items() if v is not None}
                                       for s in page],
                       "nextPageToken": str(start + size) if more else ""})
        if name == "datasets.DatasetApiService/DownloadDataset":
            slug = f"{request.get('ownerSlug')}/{request.get('datasetSlug')}"
            if slug not in self.datasets:
                return error(404, f"dataset {slug} not found")
            return 200, "application/zip", self.datasets[slug]
        return error(404, f"twin: no such endpoint {path}")

    # -- serving ------------------------------------------------------------------------------
    def __enter__(self):
        twin = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, content_type, data = twin.handle(self.command, self.path,
                                                         dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            do_POST = do_PUT = do_GET = answer

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((HOST, PORT), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def ok(obj):
    return 200, "application/json", json.dumps(obj).encode()


def error(status, message):
    return status, "application/json", json.dumps({"code": status, "message": message}).encode()
