"""Settings of the dashboard benchmark's server: the production settings plus a bare view (bench_urls)."""
from l2site.settings import *  # noqa: F401,F403

ROOT_URLCONF = "tests.benchmarks.bench_urls"
