"""An offline twin of Kaggle: a loopback HTTP server speaking the wire format of the endpoints the
suite uses, for the real kaggle client (kagglesdk sends KAGGLE_API_ENVIRONMENT=TEST requests to
http://localhost:7777/api/v1/<service>/<method>, JSON POST, Bearer token), and, when it is given a
folder to run sessions in, Kaggle's sessions themselves: a pushed version runs (tests/
kaggle_session.py) in a /kaggle tree built by Kaggle's rules.

The rules it enforces, each from Kaggle's documentation, the kaggle package's source or
practitioners' reports, as collected with their sources in ../shared/KAGGLE.md:
- A kernel cannot attach its own output: its own id in kernel_sources comes back in the push
  answer's invalid_kernel_sources (kagglesdk ApiSaveKernelResponse) and is not mounted; the push
  still succeeds. So does a source that does not exist (invalid_dataset_sources too).
- A kernel source mounts the newest *complete* version's output, under
  input/notebooks/<owner>/<slug>/ beside __notebook__.ipynb / __script__.py and __output__.json;
  a kernel with no complete version cannot be attached (an errored version's output is not
  accepted). Data sets mount at input/datasets/<owner>/<slug>/ (their newest version),
  competitions at input/competitions/<slug>/. input/ is read-only; working/ is the output.
- A session ends at 12 h (GPU or CPU), at 9 h for a kernel of a code competition, or at the
  push's session_timeout_seconds: it is killed, the version ends as CANCEL_ACKNOWLEDGED
  ("exceeded the max allowed execution duration", as practitioners' logs show it), and the output
  files written so far are kept (downloadable, but not attachable).
- A kernel Kaggle does not know (or someone else's private one) is answered 401/403 "Permission
  'kernels.get' was denied" (the client's messages call it "most likely a wrong kernel slug",
  kaggle-cli issue 1200); `unknown_kernel_status` = 404 answers as a plain not found instead.
- GPU time is a weekly quota (about 30 hours): GetAcceleratorQuotaStatistics (kagglesdk's
  kernels_api_service, what `kaggle quota` / quota_view() calls, kaggle-cli PR 1029) answers the
  time used, reserved by running sessions and allowed, and when it refreshes; a GPU push past it is
  refused ("exceeded the number of hours allowed to use GPU", kaggle-benchmarks issue 79).
- A code competition's submission reruns the kernel version on the hidden test set
  ($KAGGLE_IS_COMPETITION_RERUN set, the same inputs otherwise, 9 h), and the submission is the
  rerun's /kaggle/working/submission.csv, scored once it is done.
`hour` says how many real seconds a Kaggle hour lasts (tests shrink it). The rest is scripted:
a version pushed while `root` is None follows `next_run` (statuses, output, log), as before.

Served: token introspection; competitions (the list with kernels-only ones marked; submission
upload: start, PUT of the file, create; code submission by kernel and version; the daily limits;
the submissions list, paged, with statuses, scores and errors); kernels (push, session status
per version, output files and log per version, GetKernel); data sets (download as a zip, blob
upload, create, new version, status, GetDataset). Switches make it answer as Kaggle does when
things go wrong: `refuse_upload` (the file PUT gets 403), `upload_url` (where the upload goes
instead), `reject_credentials` (every call 401), `fail_with` (every call that status, e.g. 503),
`limit_status` (429, or 400 with Kaggle's "allowance" message, once `daily_limit` submissions
were made), a competition whose rules are not accepted (403), `refuse_push` (a push answered
with an error), pushes to someone else's kernels (403), unknown kernels (403 "Permission
'kernels.get' was denied", or `unknown_kernel_status`) and `missing` competitions (404).
"""
import datetime
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST, PORT = "localhost", 7777
TOKEN = "twin-token-0123456789abcdef"
USER = "twin-user"
SESSION = Path(__file__).with_name("kaggle_session.py")

OUTPUT_PAGE = 5  # output files per page: the client must follow the page tokens
RUNNING = ["QUEUED", "RUNNING", "COMPLETE"]
SESSION_HOURS, CODE_COMPETITION_HOURS = 12, 9


class KaggleTwin:
    def __init__(self, root=None, hour=3600.0):
        self.root, self.hour = (Path(root) if root else None), hour
        self.submissions = []      # dicts, oldest first
        self.uploads = {}          # blob token -> bytes
        self.blob_names = {}       # blob token -> the file name it was started with
        self.datasets = {}         # "owner/slug" -> {"versions": [{path: bytes}], "status_calls"}
        self.competitions = {}     # slug -> see add_competition
        self.missing = set()       # competition slugs answered 404; any other is an open one
        self.kernels = {}          # "owner/slug" -> [versions: dicts, see push()]
        self.next_run = {}         # how pushed versions run when no session runs them (or a list)
        self.kill_at = []          # per version run, in push order: a log line's start at which
        # the session is killed (as Kaggle ends one at its time limit), or None
        self.refuse_push = None    # a reason: the push answered with it in `error`, as Kaggle does
        self.invalid_sources = set()  # sources a push answers as invalid whatever their state
        self.requests = []         # (method, path) of every call, for assertions
        self.daily_limit = 5
        self.limit_status = 429    # the answer past the daily limit: 429, or 400 ("allowance")
        self.refuse_upload = False
        self.upload_url = None
        self.reject_credentials = False
        self.fail_with = None
        self.unknown_kernel_status = 403  # Kaggle's answer for a kernel it does not know
        self.gpu_hours = {"used": 0.0, "reserved": 0.0, "allowed": 30.0}  # this week's quota
        self.lock = threading.RLock()

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
        return self.submissions[-1]

    def add_competition(self, slug, code=False, rules_accepted=True, files=None, hidden=None,
                        labels=None):
        """files: {path: bytes} mounted under input/competitions/<slug>/; hidden: the test folder's
        files on a code competition's rerun ({path under the test folder: bytes}); labels: {id:
        label} a submission is scored against (accuracy)."""
        self.competitions[slug] = {"code": code, "rules_accepted": rules_accepted,
                                   "files": files or {}, "hidden": hidden, "labels": labels}

    def add_dataset(self, slug, files):
        """A data set (or its new version) of files {path: bytes}."""
        entry = self.datasets.setdefault(slug, {"versions": [], "status_calls": 0})
        entry["versions"].append(dict(files))

    def version(self, kernel, number=None):
        versions = self.kernels[kernel]
        return versions[(number or len(versions)) - 1]

    def wait(self, kernel, number=None, timeout=900):
        """Until the version's session has ended; its status."""
        version = self.version(kernel, number)
        version["done"].wait(timeout)
        return version["status"]

    # -- pushing and running a version --------------------------------------------------------
    def push(self, request):
        """A new version of the kernel with the pushed metadata and code. With a session folder
        it runs there (in a thread) by Kaggle's rules; else it follows next_run: `statuses`
        answered one per status call (the last repeats), the `failure` message, `output` files
        {path: bytes} and the `log`."""
        with self.lock:
            slug = request["slug"]
            versions = self.kernels.setdefault(slug, [])
            invalid = {"kernel": [], "dataset": []}
            for source in request.get("kernelDataSources") or []:
                if source == slug or self.newest_complete(source) is None \
                        or source in self.invalid_sources:
                    invalid["kernel"].append(source)  # its own, or none complete to attach
            for source in request.get("datasetDataSources") or []:
                if source not in self.datasets:
                    invalid["dataset"].append(source)
            version = {"number": len(versions) + 1, "request": request, "invalid": invalid,
                       "pushed": datetime.datetime.utcnow().isoformat(timespec="microseconds") + "Z",
                       "status_calls": 0, "done": threading.Event(), "log": "", "output": {},
                       "failure": "", "executed": None}
            if self.root is None:  # next_run: one for every push, or a list, one each
                scripted = self.next_run.pop(0) if isinstance(self.next_run, list) else self.next_run
                version.update({"statuses": RUNNING, **scripted})
                version["status"] = version["statuses"][-1]
                version["done"].set()
            else:
                version.update(status="QUEUED", statuses=None,
                               mounted=self.mounts(request, invalid),
                               kill_at=self.kill_at.pop(0) if self.kill_at else None)
            versions.append(version)
        if self.root is not None:
            threading.Thread(target=self.run_version, args=(slug, version), daemon=True).start()
        return version

    def newest_complete(self, kernel):
        """The newest complete version of a kernel, or None."""
        return next((v for v in reversed(self.kernels.get(kernel, []))
                     if v["status"] == "COMPLETE"), None)

    def mounts(self, request, invalid):
        """{path under input/: files}: what the session sees, fixed when it is pushed."""
        mounts = {}
        for slug in request.get("competitionDataSources") or []:
            mounts[f"competitions/{slug}"] = self.competitions.get(slug, {}).get("files", {})
        for source in request.get("datasetDataSources") or []:
            if source not in invalid["dataset"]:
                mounts[f"datasets/{source}"] = self.datasets[source]["versions"][-1]
        for source in request.get("kernelDataSources") or []:
            if source not in invalid["kernel"]:
                attached = self.newest_complete(source)
                code = "__notebook__.ipynb" if attached["request"]["kernelType"] == "notebook" \
                    else "__script__.py"
                mounts[f"notebooks/{source}"] = {
                    **attached["output"], code: attached["request"]["text"].encode(),
                    "__output__.json": json.dumps({"version": attached["number"]}).encode()}
        return mounts

    def session_hours(self, request):
        codes = [s for s in request.get("competitionDataSources") or []
                 if self.competitions.get(s, {}).get("code")]
        return CODE_COMPETITION_HOURS if codes else SESSION_HOURS

    def run_version(self, slug, version, rerun_of=None):
        """A session: the /kaggle tree, the code run with a time limit, the output and the log."""
        target = version if rerun_of is None else rerun_of
        try:
            self.session(slug, version, rerun_of)
        except BaseException as e:  # the twin's own failure: said, never a test that hangs
            target.update(status="ERROR", failure=f"twin failure: {type(e).__name__}: {e}")
            raise
        finally:
            target["done"].set()

    def session(self, slug, version, rerun_of):
        request = version["request"]
        tree = self.root / f"{slug.replace('/', '-')}-v{version['number']}" \
            if rerun_of is None else self.root / f"{slug.replace('/', '-')}-v{version['number']}-rerun"
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "input").mkdir(parents=True)
        for path, data in self.session_inputs(version, rerun_of).items():
            (tree / "input" / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / "input" / path).write_bytes(data)
        read_only(tree / "input")
        for folder in ("working", "temp"):
            (tree / folder).mkdir(parents=True)
        code = tree / ("kernel.ipynb" if request["kernelType"] == "notebook" else "kernel.py")
        code.write_text(request["text"])
        limit = self.session_hours(request) * self.hour
        if request.get("sessionTimeoutSeconds"):
            limit = min(limit, int(request["sessionTimeoutSeconds"]) * self.hour / 3600)
        env = {**os.environ, "KAGGLE_ROOT": str(tree), "MPLBACKEND": "Agg",
               "KAGGLE_KERNEL_RUN_TYPE": "Batch"}
        env.pop("KERNEL_ARGS", None)
        if rerun_of is not None:
            env["KAGGLE_IS_COMPETITION_RERUN"] = "True"
        target = version if rerun_of is None else rerun_of
        target["status"] = "RUNNING"
        log, started = [], time.time()
        process = subprocess.Popen([sys.executable, str(SESSION), str(code),
                                    str(tree / "executed.ipynb")], cwd=tree / "working", env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        killer = threading.Timer(limit, lambda: kill_session(process.pid))
        killer.start()
        killed = False
        for line in process.stdout:  # as it arrives: what Kaggle's Logs tab shows
            log.append({"stream_name": "stdout", "time": round(time.time() - started, 3),
                        "data": line})
            target["log"] = json.dumps(log)
            if rerun_of is None and version["kill_at"] and line.startswith(version["kill_at"]) \
                    and not killed:
                killed = True
                kill_session(process.pid)
        process.wait()
        killer.cancel()
        timed_out = process.returncode == -signal.SIGKILL
        target["output"] = {str(p.relative_to(tree / "working")): p.read_bytes()
                            for p in sorted((tree / "working").rglob("*")) if p.is_file()}
        target["executed"] = (tree / "executed.ipynb").read_text() \
            if (tree / "executed.ipynb").is_file() else None
        target["log"] = json.dumps(log)
        if timed_out:  # as Kaggle reports a session stopped at its limit
            target["status"] = "CANCEL_ACKNOWLEDGED"
            target["failure"] = (f"Kernel exceeded the max allowed execution duration "
                                 f"({limit / self.hour:g} hours) (twin)")
        elif process.returncode:
            target["status"] = "ERROR"
            target["failure"] = "the notebook raised an error (twin)"
        else:
            target["status"] = "COMPLETE"

    def session_inputs(self, version, rerun_of):
        """{path under input/: bytes}; on a code competition's rerun the competition's test
        folder holds its hidden files instead."""
        files = {}
        for mount, content in version["mounted"].items():
            slug = mount.removeprefix("competitions/")
            hidden = self.competitions.get(slug, {}).get("hidden") \
                if rerun_of is not None and mount.startswith("competitions/") else None
            for path, data in content.items():
                if hidden is not None and path.startswith("test/"):
                    continue
                files[f"{mount}/{path}"] = data
            for path, data in (hidden or {}).items():
                files[f"{mount}/test/{path}"] = data
        return files

    def rerun(self, submission, kernel, number):
        """A code competition's submission: the kernel version rerun on the hidden test set;
        the submission is scored on the rerun's submission.csv."""
        version = self.version(kernel, number)
        session = {"status": "QUEUED", "log": "", "output": {}, "failure": "",
                   "done": threading.Event(), "executed": None}
        submission["rerun"] = session
        self.run_version(kernel, version, rerun_of=session)
        if session["status"] != "COMPLETE":
            submission.update(status="ERROR", errorDescription=f"the rerun failed: {session['failure']}")
        elif "submission.csv" not in session["output"]:
            submission.update(status="ERROR", errorDescription="Submission CSV Not Found (twin)")
        else:
            self.score(submission, session["output"]["submission.csv"].decode())

    def score(self, submission, content):
        """Accuracy against the competition's labels (rows matched by id)."""
        labels = self.competitions.get(submission["competition"], {}).get("labels")
        if not labels:
            return
        rows = [line.split(",") for line in content.strip().splitlines()[1:]]
        predicted = {row[0].rsplit(".", 1)[0]: row[1] for row in rows if len(row) >= 2}
        if not set(predicted) & set(labels):
            submission.update(status="ERROR", errorDescription="no row has an id of the test "
                              "set (twin)")
            return
        right = sum(predicted.get(i) == label for i, label in labels.items())
        submission.update(status="COMPLETE", publicScore=f"{right / len(labels):.3f}")

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
            output = self.version(f"{owner}/{slug}", int(number))["output"]
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
        if service in ("datasets.DatasetApiService", "blobs.BlobApiService"):
            return self.dataset_call(call, request)
        return self.competition_call(name, request)

    def competition_call(self, name, request):
        competition = request.get("competitionName")
        if competition in self.missing:
            return error(404, f"competition {competition} not found")
        settings = self.competitions.get(competition, {"code": False, "rules_accepted": True})
        today = [s for s in self.submissions if s["competition"] == competition
                 and s.get("today")]
        call = name.rpartition("/")[2]
        if call in ("StartSubmissionUpload", "CreateCodeSubmission"):
            if not settings["rules_accepted"]:
                return error(403, "You must accept this competition's rules before you submit")
            if len(today) >= self.daily_limit:
                return error(self.limit_status, "Submission not allowed: your team has used its "
                             f"daily Submission allowance ({self.daily_limit}) today")
        if call == "StartSubmissionUpload":
            blob = f"blob-{len(self.uploads) + 1}-{request['fileName']}"
            return ok({"token": blob,
                       "createUrl": self.upload_url or f"http://{HOST}:{PORT}/upload/{blob}"})
        if call == "CreateSubmission":
            blob = request.get("blobFileTokens")
            if blob not in self.uploads:
                return error(400, "no uploaded file for this submission")
            content = self.uploads[blob].decode()
            submission = self.add_submission(competition, request.get("submissionDescription"),
                                             content=content, today=True)
            self.score(submission, content)
            return ok({"message": f"Successfully submitted to {competition}",
                       "ref": submission["ref"]})
        if call == "CreateCodeSubmission":
            kernel = f"{request.get('kernelOwner')}/{request.get('kernelSlug')}"
            versions = self.kernels.get(kernel, [])
            number = int(request.get("kernelVersion") or 0)
            if not 1 <= number <= len(versions):
                return error(404, f"kernel {kernel} version {request.get('kernelVersion')} "
                             "not found")
            submission = self.add_submission(competition, request.get("submissionDescription"),
                                             kernel=kernel, kernelVersion=number,
                                             outputFile=request.get("fileName"), today=True)
            if self.root is not None and versions[number - 1].get("mounted") is not None:
                threading.Thread(target=self.rerun, args=(submission, kernel, number),
                                 daemon=True).start()
            return ok({"message": f"Successfully submitted to {competition}",
                       "ref": submission["ref"]})
        if call == "GetSubmissionLimits":
            return ok({"numToday": len(today), "numTotal": len(today),
                       "numAllowedNow": max(0, self.daily_limit - len(today))})
        if call == "ListCompetitions":
            return ok({"competitions": [
                {"ref": f"https://www.kaggle.com/competitions/{slug}", "title": slug,
                 "isKernelsSubmissionsOnly": c["code"]}
                for slug, c in self.competitions.items() if request.get("search", "") in slug]})
        if call == "ListSubmissions":
            hidden = ("competition", "content", "today", "kernel", "kernelVersion", "outputFile",
                      "rerun")
            mine = [{k: v for k, v in s.items() if k not in hidden}
                    for s in reversed(self.submissions)
                    if s["competition"] == competition]
            start, size = int(request.get("pageToken") or 0), int(request.get("pageSize") or 20)
            page = mine[start:start + size]
            more = start + size < len(mine)
            return ok({"submissions": [{k: v for k, v in s.items() if v is not None}
                                       for s in page],
                       "nextPageToken": str(start + size) if more else ""})
        return error(404, f"twin: no such endpoint {name}")

    def dataset_call(self, call, request):
        if call == "StartBlobUpload":
            blob = f"blob-{len(self.uploads) + len(self.blob_names) + 1}"
            self.blob_names[blob] = request["name"]
            return ok({"token": blob, "createUrl": f"http://{HOST}:{PORT}/upload/{blob}"})
        slug = f"{request.get('ownerSlug')}/{request.get('datasetSlug') or request.get('slug')}"
        if call in ("CreateDataset", "CreateDatasetVersion"):
            if request.get("ownerSlug") != USER:
                return error(403, f"you may not write {request.get('ownerSlug')}'s data sets")
            exists = slug in self.datasets
            if exists == (call == "CreateDataset"):
                return ok({"error": "The requested slug is already in use by a dataset" if exists
                           else f"dataset {slug} not found", "status": "error"})
            files = (request.get("body") or request).get("files") or []
            missing = [f["token"] for f in files if f["token"] not in self.uploads]
            if missing:
                return ok({"error": f"no uploaded file for {missing[0]}", "status": "error"})
            self.add_dataset(slug, unpacked({self.blob_names[f["token"]]: self.uploads[f["token"]]
                                             for f in files}))
            self.datasets[slug]["status_calls"] = 0  # processed after one status call
            return ok({"ref": slug, "url": f"https://www.kaggle.com/datasets/{slug}",
                       "status": "ok"})
        if slug not in self.datasets:
            return error(404, f"dataset {slug} not found")
        entry = self.datasets[slug]
        if call == "GetDatasetStatus":
            entry["status_calls"] += 1
            return ok({"status": "READY" if entry["status_calls"] > 1 else "BLOBS_RECEIVED"})
        if call == "GetDataset":
            return ok({"ref": slug, "currentVersionNumber": len(entry["versions"])})
        if call == "DownloadDataset":
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as z:
                for name, data in entry["versions"][-1].items():
                    z.writestr(name, data)
            return 200, "application/zip", buffer.getvalue()
        return error(404, f"twin: no such endpoint datasets.DatasetApiService/{call}")

    def kernel_call(self, call, request):
        if call == "GetAcceleratorQuotaStatistics":
            hours = self.gpu_hours
            return ok({"quotaRefreshTime": "2026-12-12T00:00:00.000Z", "gpuQuota": {
                "timeUsed": f"{round(hours['used'] * 3600)}s",
                "timeReserved": f"{round(hours['reserved'] * 3600)}s",
                "totalTimeAllowed": f"{round(hours['allowed'] * 3600)}s"}})
        if call == "SaveKernel":
            owner = request["slug"].split("/")[0]
            if owner != USER:
                return error(403, f"you may not push to {owner}'s kernels")
            if self.refuse_push:
                return ok({"error": self.refuse_push})
            if request.get("enableGpu") and self.gpu_hours["used"] >= self.gpu_hours["allowed"]:
                return ok({"error": "You have exceeded the number of hours allowed to use GPU. "
                           "You will not be able to commit unless you turn off GPU (twin)"})
            version = self.push(request)
            return ok({"ref": f"/code/{request['slug']}", "versionNumber": version["number"],
                       "url": f"https://www.kaggle.com/code/{request['slug']}",
                       "invalidKernelSources": version["invalid"]["kernel"],
                       "invalidDatasetSources": version["invalid"]["dataset"]})
        kernel = f"{request.get('userName')}/{request.get('kernelSlug')}"
        if kernel not in self.kernels:  # unknown, or someone else's private kernel: alike
            if self.unknown_kernel_status == 404:
                return error(404, f"kernel {kernel} not found")
            return error(self.unknown_kernel_status, "Permission 'kernels.get' was denied")
        versions = self.kernels[kernel]
        label = request.get("versionLabel") or f"v{len(versions)}"
        if not (label.startswith("v") and label[1:].isdigit()
                and 1 <= int(label[1:]) <= len(versions)):
            return error(404, f"kernel {kernel} has no version {label}")
        version = versions[int(label[1:]) - 1]
        if call == "GetKernel":
            return ok({"metadata": {"ref": kernel, "title": version["request"].get("newTitle"),
                                    "currentVersionNumber": len(versions),
                                    "lastRunTime": versions[-1]["pushed"]},
                       "blob": {"source": version["request"].get("text")}})
        if call == "GetKernelSessionStatus":
            if version["statuses"] is None:
                status = version["status"]
            else:
                statuses = version["statuses"]
                status = statuses[min(version["status_calls"], len(statuses) - 1)]
                version["status_calls"] += 1
            ended = status in ("ERROR", "CANCEL_ACKNOWLEDGED")
            return ok({"status": status, "failureMessage": version["failure"] if ended else ""})
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


def kill_session(pid):
    """SIGKILL a session's every process, as the end of Kaggle's machine does: the runner and all
    its descendants (the Jupyter kernel runs in a session of its own, its workers, torchrun's)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    doomed, todo = [], [pid]
    while todo:
        doomed.append(todo.pop())
        todo += children.get(doomed[-1], [])
    for process in doomed:
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return doomed


def unpacked(files):
    """{name: bytes} as Kaggle keeps an uploaded data set: a zip archive (what the kaggle CLI's
    --dir-mode zip uploads a folder as) unpacked into a folder of its name."""
    out = {}
    for name, data in files.items():
        if not name.endswith(".zip"):
            out[name] = data
            continue
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                if not member.endswith("/"):
                    out[f"{name[:-4]}/{member}"] = archive.read(member)
    return out


def read_only(tree):
    """As Kaggle mounts input/."""
    for path in [*Path(tree).rglob("*"), Path(tree)]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def ok(obj):
    return 200, "application/json", json.dumps(obj).encode()


def kaggle_log(lines, stream="stdout"):
    """A kernel's log as Kaggle keeps it: a JSON list of {stream_name, time, data}."""
    return json.dumps([{"stream_name": stream, "time": i * 0.5, "data": line + "\n"}
                       for i, line in enumerate(lines)])


def error(status, message):
    return status, "application/json", json.dumps({"code": status, "message": message}).encode()
