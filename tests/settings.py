"""Settings for the test suite: the production settings with test defaults for the environment.

Plain HTTP (the test client and the browser tests speak http://), no relay kick on commit
(tests call the relay themselves), static files from the finders. The database and broker
still come from DATABASE_URL / CELERY_BROKER_URL, or the embedded default when unset.
"""
import os

os.environ.setdefault("L2_HTTPS", "false")
os.environ.setdefault("EVENT_RELAY_ON_COMMIT", "false")
os.environ.setdefault("L2_MANIFEST_STATIC", "false")

from l2site.settings import *  # noqa: E402,F401,F403
