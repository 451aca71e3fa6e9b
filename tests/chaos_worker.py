"""A Celery worker for the chaos test (tests/preprocessing/test_chaos.py), with its steps slowed down.

    python -m tests.chaos_worker -A l2site worker …   (the arguments of ``celery``)

``L2_CHAOS_SLOW`` (seconds, default 0: nothing slowed) is how long the checking of result
files (intake), each L2 frame (generation) and the metadata store's answer to
``createL2InversionInventory`` (publication; half before the store records it, half after)
take, so that a SIGKILL can land in the middle of each. Preprocessing is slowed by the test
settings' ``L2_TEST_FRAME_DELAY``. Tests only: the production worker is plain ``celery``.
"""
from __future__ import annotations

import functools
import os
import sys
import time


def _slow_down(seconds: float) -> None:
    from publishing import intake, pipeline
    from scanning.metadata_store import MetadataStoreClient

    validate = intake.validate_results

    @functools.wraps(validate)
    def slow_validate(*args, **kwargs):
        time.sleep(seconds)
        return validate(*args, **kwargs)

    intake.validate_results = slow_validate

    generate_all = pipeline.generate_all

    @functools.wraps(generate_all)
    def slow_generate_all(*args, progress_cb=None, **kwargs):
        def progress(done, total):
            time.sleep(seconds / 4)
            if progress_cb is not None:
                progress_cb(done, total)

        return generate_all(*args, progress_cb=progress, **kwargs)

    pipeline.generate_all = slow_generate_all

    create = MetadataStoreClient.create_l2_inversion_inventory

    @functools.wraps(create)
    def slow_create(self, *args, **kwargs):
        time.sleep(seconds / 2)
        answer = create(self, *args, **kwargs)
        time.sleep(seconds / 2)
        return answer

    MetadataStoreClient.create_l2_inversion_inventory = slow_create


def main() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    seconds = float(os.environ.get("L2_CHAOS_SLOW") or 0)
    if seconds > 0:
        _slow_down(seconds)
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
