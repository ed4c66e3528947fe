"""Import NNI without its noise: warnings about newer torch, and gym's banner (NNI's RL strategy imports it)."""
import contextlib
import io
import warnings
from typing import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
