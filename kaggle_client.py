"""The Kaggle client: one authenticated API object (or one clear line and exit code 2), its calls
with their errors as one line, and submissions. The only module that imports the kaggle package.

Used by data_conversion.py (--download), predict.py (--submit), compare.py and kernels/kaggle_loop.py.
"""

import contextlib
import functools
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from common import SuiteError

# ----------------------------------------------------------------------------------------------
# Kaggle: one authenticated client, or one clear line and exit code 2

KAGGLE_MINIMUM = (2, 2, 5)  # versioned kernel calls: up to 2.2.4 OWNER/SLUG/N acts on the newest
# version (kaggle-cli issue 1200, fixed by PR 1201 in 2.2.5, which sends version_label)

KAGGLE_HELP = ("Kaggle credentials not found: create a token at https://www.kaggle.com/settings/api "
               "and export KAGGLE_API_TOKEN=... (or save it to ~/.kaggle/access_token, or put "
               "kaggle.json in ~/.kaggle/)")


@functools.lru_cache(maxsize=1)
def kaggle_api_class():
    """The kaggle package's KaggleApi, with one change to how it builds its HTTP client.

    KaggleApi always talks to api.kaggle.com (unless --local), ignoring kagglesdk's own
    KAGGLE_API_ENVIRONMENT (TEST -> http://localhost:7777, what our tests serve), and with
    VERBOSE=1 it prints every request's headers, the token included. Here the environment comes
    from kagglesdk and verbose output is off."""
    captured = io.StringIO()
    try:  # importing kaggle authenticates and prints (with VERBOSE, the token): never shown
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi
            from kagglesdk import KaggleClient
            from kagglesdk.kaggle_env import get_env
    except Exception as e:
        raise SuiteError(f"the kaggle package does not import ({type(e).__name__}: {e}); "
                         "pip install -r requirements.txt", code=2) from None

    class SuiteKaggleApi(KaggleApi):
        def build_kaggle_client(self):
            return KaggleClient(env=get_env(), verbose=False,
                                username=self.config_values.get(self.CONFIG_NAME_USER),
                                password=self.config_values.get(self.CONFIG_NAME_KEY),
                                api_token=self.config_values.get(self.CONFIG_NAME_TOKEN),
                                response_processor=self.get_response_processor())
    return SuiteKaggleApi


def installed_kaggle_version():
    """The installed kaggle package's version text, or None (a seam: tests point it elsewhere)."""
    from importlib import metadata
    try:
        return metadata.version("kaggle")
    except metadata.PackageNotFoundError:
        return None


def check_kaggle_version(minimum=KAGGLE_MINIMUM):
    """One line and exit code 2 when the kaggle client is missing or older than `minimum`."""
    needed = ".".join(map(str, minimum))
    found = installed_kaggle_version()
    numbers = tuple(int(n) for n in re.findall(r"\d+", found or "")[:3])
    if numbers < minimum:
        raise SuiteError(f"kaggle {found or 'is not installed'}"
                         f"{' is too old' if found else ''}: this needs kaggle >= {needed} "
                         f"(older clients act on the newest kernel version, not the one asked "
                         f"for); pip install 'kaggle>={needed}'", code=2)
    return found


def kaggle_error(action, error):
    """One line for a failed Kaggle call: which call, what Kaggle (or the network) said, and
    what to do. Never the token: messages come from status lines and URLs, and are redacted."""
    import requests
    # kernels_status/kernels_output turn a 401/403 into a ValueError guessing at a wrong slug;
    # the HTTP answer it replaced says what happened
    replaced = error.__context__
    if getattr(error, "response", None) is None and isinstance(replaced, requests.HTTPError):
        error = replaced
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    answer = ""
    with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):  # its JSON error
        answer = str(response.json()["message"])
    if status in (401, 403) and action == "authentication":
        reason = (f"Kaggle rejected the credentials ({status}): the token is invalid or expired; "
                  "create a new one at https://www.kaggle.com/settings/api")
    elif status is not None:
        reason = f"Kaggle answered {status} {response.reason or ''}".rstrip()
        reason += f" ({answer})" if answer else ""
        if status == 429 or (status == 400 and "allowance" in reason.lower()):
            reason += ": the daily submission limit is reached; it resets at midnight UTC"
        elif status in (401, 403):
            reason += ": check that this account may do this (joined the competition, accepted "
            reason += "its rules) and that the token is valid"
        elif status == 404:
            reason += ": check the name (competition slug, USER/KERNEL-SLUG) and that this "
            reason += "account can see it"
        elif status >= 500:
            reason += ": Kaggle's side; try again later"
    elif isinstance(error, (requests.ConnectionError, requests.Timeout)):
        reason = "could not reach Kaggle (no network?)" + (
            "; a Kaggle kernel needs its internet setting on for this"
            if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") else "")  # set in Kaggle's sessions
    else:
        reason = f"{type(error).__name__}: {error}"
    return SuiteError(kaggle_redacted(f"{action} failed: {reason}"), code=2, status=status,
                      answer=kaggle_redacted(answer))


def kaggle_redacted(text):
    """text without the API token, in case a message or a printed reason carries it."""
    from kagglesdk.kaggle_env import get_access_token_from_env
    token = get_access_token_from_env()[0]
    return text.replace(token, "***") if token else text


def kaggle_call(action, fn, *args, printed=None, **kwargs):
    """fn(*args, **kwargs) with its printing captured and any failure turned into one line.
    What the package printed is appended to the list `printed`, if given: it reports some
    refusals (a failed upload) only by printing the reason."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            return fn(*args, **kwargs)
    except SuiteError:
        raise
    except (Exception, SystemExit) as e:
        raise kaggle_error(action, e) from None
    finally:
        if printed is not None:
            printed.append(captured.getvalue())


def kaggle_credentials_present():
    """Whether any credentials the kaggle package reads are there (token, key, kaggle.json)."""
    from kagglesdk.kaggle_env import get_access_token_from_env
    folders = [os.environ.get("KAGGLE_CONFIG_DIR", "~/.kaggle"), "~/.config/kaggle"]
    return bool(get_access_token_from_env()[0] or os.environ.get("KAGGLE_KEY")
                or any((Path(d).expanduser() / "kaggle.json").is_file() for d in folders))


def kaggle_api():
    """An authenticated kaggle client, or exit code 2 with one line saying what is wrong:
    no credentials, rejected credentials, no network, or the package itself."""
    api = kaggle_api_class()()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its help text; ours is one line
            api.authenticate()
    except SystemExit:  # the package found no credentials it could use
        if kaggle_credentials_present():
            raise SuiteError("Kaggle did not accept the credentials found (token invalid or "
                             "expired?): create a new one at https://www.kaggle.com/settings/api",
                             code=2) from None
        raise SuiteError(KAGGLE_HELP, code=2) from None
    except Exception as e:
        raise kaggle_error("authentication", e) from None
    return api


def kaggle_submit(csv_path, competition, message, dry_run=False):
    """Send a submission through the kaggle package; any failure is one line and exit code 2."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise SuiteError(f"{csv_path}: no such submission file", code=2)
    if dry_run:
        with open(csv_path) as f:
            n = sum(1 for _ in f) - 1
        print(f"dry run: would submit {csv_path} ({n} rows) to {competition} with message "
              f"{message!r}")
        return None
    api = kaggle_api()
    printed = []
    result = kaggle_call(f"submission of {csv_path} to {competition}", api.competition_submit,
                         str(csv_path), message, competition, quiet=True, printed=printed)
    return kaggle_submitted(api, competition, result, str(csv_path), "".join(printed))


def kaggle_submitted(api, competition, result, what, printed=""):
    """A submission's answer checked and told: its ref and the submissions left today, or one
    line with the reason the package only printed (it answers a failed upload with a message)."""
    answer = getattr(result, "message", "") or ""
    if answer == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE or not getattr(result, "ref", None):
        reason = " ".join(printed.split())[:300] or "the file upload was not accepted"
        raise SuiteError(kaggle_redacted(f"Kaggle refused the submission of {what} to "
                                         f"{competition}: {answer or 'no submission was created'}"
                                         f" ({reason})"), code=2)
    left = kaggle_submissions_left(api, competition)
    print(f"submitted {what} to {competition}: ref {result.ref}"
          + (f", {left} submissions left today" if left is not None else ""))
    return result


def kernel_metadata(api, kernel_id):
    """GetKernel's metadata of a kernel (what `kaggle kernels pull` calls)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

    def get():
        with api.build_kaggle_client() as client:
            request = ApiGetKernelRequest()
            request.user_name, request.kernel_slug = kernel_id.split("/")
            return client.kernels.kernels_api_client.get_kernel(request)
    return kaggle_call(f"looking up {kernel_id}", get).metadata


def all_submissions(api, competition):
    """Every submission of the user to a competition, newest first: all pages, which the
    package's competition_submissions() cannot give (it drops the next-page token)."""
    from kagglesdk.competitions.types.competition_api_service import ApiListSubmissionsRequest

    def list_all():
        submissions, token = [], ""
        with api.build_kaggle_client() as client:
            for _ in range(1000):  # a guard against a server that never stops paging
                request = ApiListSubmissionsRequest()
                request.competition_name, request.page_size = competition, 100
                request.page_token = token
                response = client.competitions.competition_api_client.list_submissions(request)
                submissions += response.submissions or []
                token = response.next_page_token
                if not token:
                    break
        return submissions
    return kaggle_call(f"reading the submissions of {competition}", list_all)


def kaggle_submissions_left(api, competition):
    """Submissions left today as `kaggle competitions submit` tells them (GetSubmissionLimits'
    num_allowed_now), or None when Kaggle does not say: never a failure after submitting."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return api.competition_get_submission_limits(competition).num_allowed_now
    except Exception:
        return None


def names_run(message, run_name):
    """Whether a submission message names the run as a whole word ('cnn-a v2' names cnn-a,
    not cnn-a2 or cnn): how compare.py --kaggle finds a run's score."""
    return re.search(rf"(?<![\w.-]){re.escape(run_name)}(?![\w.-])", message or "") is not None


def submission_message(message, run_name):
    """The user's message (default: the run name), with the run name added when it lacks it."""
    if not message:
        return run_name
    return message if names_run(message, run_name) else f"{message} [{run_name}]"


# ----------------------------------------------------------------------------------------------
# Kernels: the GPU quota; data sets: the newest version

@dataclass
class Quota:
    """This week's GPU hours (Kaggle's GetAcceleratorQuotaStatistics, what `kaggle quota` shows)."""
    used: float
    reserved: float   # by sessions running now
    allowed: float
    refresh: object   # a datetime (UTC) or None

    @property
    def left(self):
        return max(0.0, self.allowed - self.used - self.reserved)

    def __str__(self):
        when = f", refreshes {self.refresh:%Y-%m-%d %H:%M} UTC" if self.refresh else ""
        return (f"GPU quota: {self.left:.1f} h left of {self.allowed:.1f} h this week ("
                f"{self.used:.1f} h used" + (f", {self.reserved:.1f} h reserved by running "
                                             f"sessions" if self.reserved else "") + f"{when})")


def gpu_quota(api):
    """The GPU quota, or None when Kaggle does not say."""
    answer = kaggle_call("reading the GPU quota", api.quota_view)
    quota = answer.gpu_quota
    if quota is None or quota.total_time_allowed is None:
        return None

    def hours(delta):
        return delta.total_seconds() / 3600 if delta else 0.0
    return Quota(hours(quota.time_used), hours(quota.time_reserved),
                 hours(quota.total_time_allowed), answer.quota_refresh_time)


def dataset_version(api, dataset):
    """The data set's newest version number (GetDataset); 0 when there is no such data set."""
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest

    def get():
        with api.build_kaggle_client() as client:
            request = ApiGetDatasetRequest()
            request.owner_slug, request.dataset_slug = dataset.split("/")
            return client.datasets.dataset_api_client.get_dataset(request)
    try:
        return kaggle_call(f"looking up {dataset}", get).current_version_number or 0
    except SuiteError as e:
        if e.status != 404:
            raise
        return 0
