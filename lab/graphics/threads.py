"""The render threads: templates (ACR) and image chunks (maxSemiSoft) are shared out
among a few worker threads.

numpy releases the GIL inside its loops, so on an idle multi-core CPU two threads
nearly halve the render time (the thesis used a GPU for this, 2.5.2). Results do not
depend on the thread count: every work item is computed the same way.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor


def _default_threads() -> int:
    try:
        return max(1, int(os.environ.get("LAB_RENDER_THREADS", min(2, os.cpu_count() or 1))))
    except ValueError:
        return 1


#: Worker threads (default: min(2, cores)). Set with ``set_render_threads`` or
#: ``$LAB_RENDER_THREADS``; 1 runs everything in the calling thread.
RENDER_THREADS = _default_threads()

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0
_pool_lock = threading.Lock()


def set_render_threads(n: int) -> None:
    """Use ``n`` worker threads for ``render_templates`` (1: no threads)."""
    global RENDER_THREADS
    RENDER_THREADS = max(1, int(n))


def parallel_map(fn, items):
    """``[fn(x) for x in items]``, on the render threads when there are several."""
    global _pool, _pool_size, _pool_pid
    items = list(items)
    if RENDER_THREADS <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with _pool_lock:
        if _pool is None or _pool_size != RENDER_THREADS or _pool_pid != os.getpid():
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)
            # (a forked child inherits the pool object but not its threads: make a new one)
            _pool, _pool_size = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="render"), RENDER_THREADS
            _pool_pid = os.getpid()
        pool = _pool
    return list(pool.map(fn, items))

