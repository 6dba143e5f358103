"""An offline twin of the Kaggle API: a loopback HTTP server speaking the wire format of the
endpoints the suite uses, for the real kaggle client. kagglesdk sends KAGGLE_API_ENVIRONMENT=TEST
requests to http://localhost:7777/api/v1/<service>/<method> (JSON POST, Bearer token).

Served: token introspection (authentication), competitions (the list, with kernels-only ones
marked; submission upload: start, PUT of the file, create; code submission by kernel and
version; the daily limits; the submissions list, paged by token, with public and private
scores), kernels (push, which records the metadata and code and answers with a version number
and URL; the session status, following a scripted sequence; the output: files with URLs that
the twin serves, paged, and the log; GetKernel with its newest version) and a dataset download
(a zip). Switches make it answer as Kaggle does when things go wrong: `refuse_upload` (the
file PUT gets 403), `upload_url` (where the upload goes instead), `reject_credentials` (every
call 401), `fail_with` (every call that status, e.g. 503), `limit_status` (429, or 400 with
Kaggle's "allowance" message, once `daily_limit` submissions were made), a competition whose
rules are not accepted (403), `refuse_push` (a push answered with an error), someone else's
kernels (403), unknown kernels and `missing` competitions (404).
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


OUTPUT_PAGE = 5  # output files per page: the client must follow the page tokens
RUNNING = ["QUEUED", "RUNNING", "COMPLETE"]


class KaggleTwin:
    def __init__(self):
        self.submissions = []      # dicts, oldest first
        self.uploads = {}          # blob token -> bytes
        self.datasets = {}         # "owner/slug" -> zip bytes
        self.competitions = {}     # slug -> {"code": kernels-only, "rules_accepted": bool}
        self.missing = set()       # competition slugs answered 404; any other is an open one
        self.kernels = {}          # "owner/slug" -> [versions: dicts, see push()]
        self.next_run = {}         # what the next pushed version does (see push())
        self.refuse_push = None    # a reason: the push answered with it in `error`, as Kaggle does
        self.requests = []         # (method, path) of every call, for assertions
        self.daily_limit = 5
        self.limit_status = 429    # the answer past the daily limit: 429, or 400 ("allowance")
        self.refuse_upload = False
        self.upload_url = None
        self.reject_credentials = False
        self.fail_with = None

    # -- what a test sets up or reads -------------------------------------------------------
    def add_submission(self, competition, description, public_score=None, private_score=None,
                       **extra):
        ref = len(self.submissions) + 1
        self.submissions.append({
            "competition": competition, "ref": ref, "description": description,
            "fileName": "submission.csv", "publicScore": public_score,
            "privateScore": private_score,
            "status": "COMPLETE" if public_score is not None else "PENDING",
            "date": (datetime.datetime(2026, 1, 1) + datetime.timedelta(minutes=ref))
            .isoformat(timespec="milliseconds") + "Z", **extra})
        return ref

    def add_competition(self, slug, code=False, rules_accepted=True):
        self.competitions[slug] = {"code": code, "rules_accepted": rules_accepted}

    def push(self, request):
        """A new version of the kernel: the pushed metadata and code, and how it runs (from
        next_run): `statuses` answered one per status call (the last repeats), the
        `failure` message, `output` files {path: bytes} and the `log`."""
        versions = self.kernels.setdefault(request["slug"], [])
        run = {"statuses": RUNNING, "failure": "", "output": {}, "log": "", **self.next_run}
        versions.append({"number": len(versions) + 1, "request": request, "status_calls": 0,
                         **run})
        return versions[-1]

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
        if method == "GET" and path.startswith("/kernel-output/"):  # signed URLs: no token
            owner, slug, number, file = path.removeprefix("/kernel-output/").split("/", 3)
            output = self.kernels[f"{owner}/{slug}"][int(number) - 1]["output"]
            if file not in output:
                return error(404, "no such output file")
            return 200, "application/octet-stream", output[file]
        if self.reject_credentials or headers.get("Authorization") != f"Bearer {TOKEN}":
            return error(401, "Unauthenticated")
        request = json.loads(body or b"{}")
        name = path.removeprefix("/api/v1/")
        service, _, call = name.partition("/")
        if name == "security.OAuthService/IntrospectToken":
            return ok({"active": request.get("token") == TOKEN, "username": USER})
        if service == "kernels.KernelsApiService":
            return self.kernel_call(call, request)
        competition = request.get("competitionName")
        if competition in self.missing:
            return error(404, f"competition {competition} not found")
        settings = self.competitions.get(competition, {"code": False, "rules_accepted": True})
        today = [s for s in self.submissions if s["competition"] == competition
                 and s.get("today")]
        if call in ("StartSubmissionUpload", "CreateCodeSubmission"):
            if not settings["rules_accepted"]:
                return error(403, "You must accept this competition's rules before you submit")
            if len(today) >= self.daily_limit:
                return error(self.limit_status, "Submission not allowed: your team has used its "
                             f"daily Submission allowance ({self.daily_limit}) today")
        if name == "competitions.CompetitionApiService/StartSubmissionUpload":
            blob = f"blob-{len(self.uploads) + 1}-{request['fileName']}"
            return ok({"token": blob,
                       "createUrl": self.upload_url or f"http://{HOST}:{PORT}/upload/{blob}"})
        if name == "competitions.CompetitionApiService/CreateSubmission":
            blob = request.get("blobFileTokens")
            if blob not in self.uploads:
                return error(400, "no uploaded file for this submission")
            ref = self.add_submission(competition, request.get("submissionDescription"),
                                      content=self.uploads[blob].decode(), today=True)
            return ok({"message": f"Successfully submitted to {competition}", "ref": ref})
        if name == "competitions.CompetitionApiService/CreateCodeSubmission":
            kernel = f"{request.get('kernelOwner')}/{request.get('kernelSlug')}"
            versions = self.kernels.get(kernel, [])
            if not 1 <= int(request.get("kernelVersion") or 0) <= len(versions):
                return error(404, f"kernel {kernel} version {request.get('kernelVersion')} "
                             "not found")
            ref = self.add_submission(competition, request.get("submissionDescription"),
                                      kernel=kernel, kernelVersion=request["kernelVersion"],
                                      outputFile=request.get("fileName"), today=True)
            return ok({"message": f"Successfully submitted to {competition}", "ref": ref})
        if name == "competitions.CompetitionApiService/GetSubmissionLimits":
            return ok({"numToday": len(today), "numTotal": len(today),
                       "numAllowedNow": max(0, self.daily_limit - len(today))})
        if name == "competitions.CompetitionApiService/ListCompetitions":
            return ok({"competitions": [
                {"ref": f"https://www.kaggle.com/competitions/{slug}", "title": slug,
                 "isKernelsSubmissionsOnly": c["code"]}
                for slug, c in self.competitions.items() if request.get("search", "") in slug]})
        if name == "competitions.CompetitionApiService/ListSubmissions":
            hidden = ("competition", "content", "today", "kernel", "kernelVersion", "outputFile")
            mine = [{k: v for k, v in s.items() if k not in hidden}
                    for s in reversed(self.submissions)
                    if s["competition"] == competition]
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

    def kernel_call(self, call, request):
        if call == "SaveKernel":
            owner = request["slug"].split("/")[0]
            if owner != USER:
                return error(403, f"you may not push to {owner}'s kernels")
            if self.refuse_push:
                return ok({"error": self.refuse_push})
            version = self.push(request)
            return ok({"ref": f"/code/{request['slug']}", "versionNumber": version["number"],
                       "url": f"https://www.kaggle.com/code/{request['slug']}"})
        kernel = f"{request.get('userName')}/{request.get('kernelSlug')}"
        if kernel not in self.kernels:
            if request.get("userName") != USER:  # someone else's private kernel, maybe
                return error(403, "Permission 'kernels.get' was denied")
            return error(404, f"kernel {kernel} not found")
        versions = self.kernels[kernel]
        label = request.get("versionLabel") or f"v{len(versions)}"
        if not (label.startswith("v") and label[1:].isdigit()
                and 1 <= int(label[1:]) <= len(versions)):
            return error(404, f"kernel {kernel} has no version {label}")
        version = versions[int(label[1:]) - 1]
        if call == "GetKernel":
            return ok({"metadata": {"ref": kernel, "title": version["request"].get("newTitle"),
                                    "currentVersionNumber": len(versions)},
                       "blob": {"source": version["request"].get("text")}})
        if call == "GetKernelSessionStatus":
            statuses = version["statuses"]
            status = statuses[min(version["status_calls"], len(statuses) - 1)]
            version["status_calls"] += 1
            return ok({"status": status,
                       "failureMessage": version["failure"] if status == "ERROR" else ""})
        if call == "ListKernelSessionOutput":
            files = sorted(version["output"])
            start = int(request.get("pageToken") or 0)
            end = start + min(OUTPUT_PAGE, int(request.get("pageSize") or 20))
            base = f"http://{HOST}:{PORT}/kernel-output/{kernel}/{version['number']}"
            return ok({"files": [{"fileName": f, "url": f"{base}/{f}"} for f in files[start:end]],
                       "log": version["log"],
                       "nextPageToken": str(end) if end < len(files) else ""})
        return error(404, f"twin: no such endpoint kernels.KernelsApiService/{call}")

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


def kaggle_log(lines, stream="stdout"):
    """A kernel's log as Kaggle keeps it: a JSON list of {stream_name, time, data}."""
    return json.dumps([{"stream_name": stream, "time": i * 0.5, "data": line + "\n"}
                       for i, line in enumerate(lines)])


def error(status, message):
    return status, "application/json", json.dumps({"code": status, "message": message}).encode()
