"""The CLI's error wrapper: a user-caused failure (a bad value, a missing or unwritable file, a bad shard,
a non-finite loss) ends with a one-line ``error: ...`` (and a ``hint: ...``) on stderr and exit status 1
instead of a traceback. ``LIGHTNING_REDLLM_TRACEBACK=1`` shows the traceback."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, Optional

from ..errors import USER_ERRORS
from ..reliability import error_in_chain

TRACEBACK_ENV = "LIGHTNING_REDLLM_TRACEBACK"


#: DeepSpeed's import-time notice on a machine without a GPU (its logger writes to stdout, so it
#: lands in `--print_config > file.yaml` and breaks that YAML)
DEEPSPEED_CPU_NOTICE = "Setting accelerator to CPU"


class _DropDeepSpeedCpuNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(DEEPSPEED_CPU_NOTICE)


def silence_deepspeed_cpu_notice() -> None:
    """Drop DeepSpeed's "Setting accelerator to CPU. If you have GPU ..." line, printed to stdout
    whenever ``deepspeed`` is imported on a machine without CUDA (resolving a DeepSpeed recipe,
    reading a ZeRO checkpoint folder). The filter sits on the ``DeepSpeed`` logger before DeepSpeed
    configures it (it keeps the object and its filters); every other DeepSpeed message still shows.
    Idempotent."""
    log = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _DropDeepSpeedCpuNotice) for f in log.filters):
        log.addFilter(_DropDeepSpeedCpuNotice())



def one_line(err: BaseException) -> str:
    """``Type: message`` of ``err`` on one line; a DataLoader worker's re-raised error keeps only
    the original exception's last line (torch embeds the worker traceback in the message)."""
    text = str(err).strip()
    name = type(err).__name__
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    elif text.startswith("Does not validate against any of the Union subtypes"):
        # jsonargparse wraps a class's __init__ error in a union report; keep the real error(s)
        errs = [ln.strip()[2:] for ln in text.splitlines()
                if ln.strip().startswith("- ") and not ln.strip().startswith("- Expected a <class 'NoneType'>")]
        text = "; ".join(errs) or text
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{name}: {' '.join(lines)}" if lines else name


def _user_error_behind(err: BaseException) -> Optional[BaseException]:
    """``err`` if it is a user error; else a user error it was raised while handling. Lightning's
    teardown can mask one: a dataloader that fails in ``iter()`` (say, a resume state from another
    data config) is followed by ``RuntimeError: Please call iter(combined_loader) first``."""
    return error_in_chain(err, USER_ERRORS)


def guarded(main: Callable[..., Optional[int]]) -> Callable[..., int]:
    """Wrap a CLI ``main(argv) -> int``: user-caused errors -> ``error: <one line>``, exit status 1."""

    def run(*args: Any, **kwargs: Any) -> int:
        silence_deepspeed_cpu_notice()
        try:
            return int(main(*args, **kwargs) or 0)
        except BrokenPipeError:
            # the output went into a reader that closed early (`... | head`): not a user error;
            # point stdout at devnull so the interpreter's final flush does not raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception as err:  # noqa: BLE001 - re-raised unless a user error is behind it
            user = _user_error_behind(err)
            if user is None or os.environ.get(TRACEBACK_ENV):
                raise
            print(f"error: {one_line(user)}", file=sys.stderr)
            if getattr(user, "hint", ""):
                print(f"hint: {user.hint}", file=sys.stderr)
            return 1

    run.__wrapped__ = main  # type: ignore[attr-defined]
    return run


__all__ = ["TRACEBACK_ENV", "guarded", "one_line", "silence_deepspeed_cpu_notice"]
