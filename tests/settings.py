"""Settings for the test suite: the production settings with test defaults for the environment.

Plain HTTP (the test client and the browser tests speak http://), no relay kick on commit
(tests call the relay themselves), static files from the finders, no automatic generation
or publication. The database and broker
still come from DATABASE_URL / CELERY_BROKER_URL, or the embedded default when unset.
"""
import os

os.environ.setdefault("L2_HTTPS", "false")
os.environ.setdefault("EVENT_RELAY_ON_COMMIT", "false")
os.environ.setdefault("L2_MANIFEST_STATIC", "false")
# Each test says which steps it runs: no automatic generation / publication after an intake
# (tests/publishing/test_advance_inverted.py turns them on).
os.environ.setdefault("L2_AUTO_GENERATE", "false")
os.environ.setdefault("L2_AUTO_PUBLISH", "false")
# The program list counts exactly, however slow a loaded machine makes counting (a test that
# checks the count cache sets L2_COUNT_CACHE_MIN_MS itself).
os.environ.setdefault("L2_COUNT_CACHE_MIN_MS", "1e9")
# … and makes every page of it again (tests/dashboard/test_kept_pages.py turns kept pages on).
os.environ.setdefault("L2_LIST_PAGE_CACHE_SECONDS", "0")

from l2site.settings import *  # noqa: E402,F401,F403

# Tests only: seconds each assembled frame waits (makes a worker's assembly slow enough to be
# killed in the middle of it, tests/preprocessing/test_preprocess_worker.py).
L2_TEST_FRAME_DELAY = float(os.environ.get("L2_TEST_FRAME_DELAY") or 0)
# Tests only: a worker that looks for unacknowledged messages to redeliver every second (kombu's
# Redis default is about every 100 s), so a test need not wait that long after a SIGKILL.
if os.environ.get("L2_TEST_FAST_RESTORE") and CELERY_BROKER_URL.startswith("redis"):  # noqa: F405
    CELERY_BROKER_TRANSPORT_OPTIONS = {  # noqa: F405
        **CELERY_BROKER_TRANSPORT_OPTIONS, "unacked_restore_interval": 1, "unacked_restore_throttle": 1,  # noqa: F405
    }

# The test runner creates, migrates and empties its own database: it connects as the owner
# (the embedded default's app role cannot), runs migrate as Django's, and may TRUNCATE the
# history (pytest-django flushes with TRUNCATE in transactional tests; migration 0014 lets only
# a connection with this setting do it).
if not os.environ.get("DATABASE_URL") and DATABASE_MIGRATE:  # noqa: F405
    DATABASES["default"] = {**DATABASES["default"], **DATABASE_MIGRATE}  # noqa: F405
DATABASE_MIGRATE = None
_options = DATABASES["default"].setdefault("OPTIONS", {})  # noqa: F405
_options["options"] = f"{_options.get('options', '')} -c l2.allow_history_truncate=on".strip()

# Tests only: the queue tasks go to by default, so a real worker started by a test (on its own
# queue) also receives the tasks it sends itself (tests/preprocessing/test_chaos.py,
# tests/publishing/test_republish_worker.py).
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("L2_TEST_QUEUE") or os.environ.get("L2_TEST_DEFAULT_QUEUE") or "celery"
