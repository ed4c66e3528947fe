"""A progress bar for a search on a terminal: trials done / total, best score, failures; silent otherwise."""
from __future__ import annotations

import sys
import threading

from metanet.runs.store import DONE, FAILED, TrialStore


class Progress:
    def __init__(self, store: TrialStore, total: int, enabled: bool):
        self._stop = threading.Event()
        self._thread = None
        if not enabled:
            return
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc="trials", unit="trial", file=sys.stderr)
        self._thread = threading.Thread(target=self._loop, args=(store,), daemon=True)
        self._thread.start()

    def _loop(self, store: TrialStore) -> None:
        while not self._stop.wait(1.0):
            try:
                rows = store.trials()
            except Exception:  # the store is busy or being written: try again next second
                continue
            done = [r for r in rows if r["status"] in DONE]
            scores = [r["score"] for r in done if r["score"] is not None]
            self.bar.n = len(done)
            self.bar.set_postfix(best=f"{max(scores):.4f}" if scores else "-",
                                 failed=sum(r["status"] == FAILED for r in done), refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.bar.close()
