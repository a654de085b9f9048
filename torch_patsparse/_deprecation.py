"""The one home of deprecated spellings: each old name keeps working for one release and says, with
a DeprecationWarning pointing at the caller, what to write instead."""
import functools
import sys
import warnings


def warn(old: str, new: str, stacklevel: int = 3) -> None:
    caller = sys._getframe(stacklevel - 1).f_globals.get("__name__", "")
    if caller.startswith("torch."):  # TorchScript reads every attribute of a module it compiles
        return
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)


def renamed_keywords(owner: str, **renames: str):
    """Decorator: keyword ``old`` (a key of ``renames``) is passed on as ``renames[old]``, with a
    DeprecationWarning; giving both is a TypeError."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{owner}: got both {old}= (deprecated) and {new}=; pass only {new}=")
                    warn(f"{owner}({old}=...)", f"{new}=...")
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return inner
    return wrap
