"""The two processes inside the sandbox: the judge, which runs the tests and alone can
report a verdict, and the candidate, which runs the model's code and answers the judge's
calls into it.

The tests never run beside the candidate's code. Each name the candidate defines is a
proxy in the judge's namespace: calling it sends the arguments to the candidate's process
and brings back its result as plain data (bool, int, float, complex, str, bytes, None and
lists, tuples, sets, frozensets and dicts of them), rebuilt as exact builtin types; any
other object stays in the candidate's process, and its proxy has no truth value and is
equal only to itself. So a custom ``__eq__``, an early exit, ``atexit`` or a printed line
cannot make a test pass: the verdict is what the judge's own assertions found, written
with a per-run token to a pipe the candidate never holds, by a process the candidate
cannot read or signal (it is made non-dumpable and is the namespace's PID 1).

Run by the sandbox as ``python -I harness.py judge PAYLOAD_FD VERDICT_FD``; the judge
starts ``python -I harness.py candidate SOCKET_FD``. It imports only the standard library
and runs on any Python >= 3.8, whatever interpreter the sandbox was given.
"""

import ast
import builtins
import importlib
import json
import os
import resource
import socket
import subprocess
import sys
import types

MAX_MESSAGE = 32 * 2**20  # bytes of one reply from the candidate
PLAIN = (list, tuple, set, frozenset)
TAGS = {list: "l", tuple: "t", set: "s", frozenset: "z"}
BUILD = {"l": list, "t": tuple, "s": set, "z": frozenset}


def encode(value, handle):
    """Plain data as tagged JSON; ``handle(value)`` for anything else (or None: refuse)."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return {"i": hex(value)}
    if kind is float:
        return {"f": value.hex()}
    if kind is complex:
        return {"c": [value.real.hex(), value.imag.hex()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind in TAGS:
        return {TAGS[kind]: [encode(v, handle) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, handle), encode(v, handle)] for k, v in value.items()]}
    ref = handle(value)
    if ref is None:
        raise TypeError("cannot pass a %s to the candidate" % kind.__name__)
    return {"h": ref}


def decode(data, resolve):
    """Tagged JSON back to exact builtin types; ``resolve(ref)`` for a handle."""
    if data is None or type(data) is bool or type(data) is str:
        return data
    if type(data) is not dict or len(data) != 1:
        raise ValueError("malformed value")
    ((tag, v),) = data.items()
    if tag == "i" and type(v) is str:
        return int(v, 16)
    if tag == "f" and type(v) is str:
        return float.fromhex(v)
    if tag == "c" and type(v) is list and len(v) == 2:
        return complex(float.fromhex(v[0]), float.fromhex(v[1]))
    if tag == "b" and type(v) is str:
        return bytes.fromhex(v)
    if tag in BUILD and type(v) is list:
        return BUILD[tag](decode(x, resolve) for x in v)
    if tag == "d" and type(v) is list:
        return {decode(k, resolve): decode(x, resolve) for k, x in v}
    if tag == "h" and type(v) is int:
        return resolve(v)
    raise ValueError("malformed value")


class Channel:
    """Newline-delimited JSON messages over a socket."""

    def __init__(self, sock):
        self.sock, self.file = sock, sock.makefile("rb")

    def send(self, message):
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self):
        line = self.file.readline(MAX_MESSAGE + 1)
        if not line:
            raise CandidateGone("the candidate's process ended")
        if len(line) > MAX_MESSAGE:
            raise CandidateGone("the candidate sent more than %d bytes" % MAX_MESSAGE)
        return json.loads(line)


class CandidateGone(Exception):
    """The candidate's process died, hung up or broke the protocol."""


class CandidateError(Exception):
    """The candidate's code raised an exception that is not a builtin one."""


# ---------------------------------------------------------------- the candidate's side


def candidate(sock_fd):
    channel = Channel(socket.socket(fileno=sock_fd))
    objects = {}

    def handle(value):
        objects[len(objects) + 1] = value
        return len(objects)

    def reply(value):
        try:
            return encode(value, handle)
        except RecursionError:
            return {"h": handle(value)}

    while True:
        try:
            message = channel.receive()
        except CandidateGone:
            return
        try:
            op = message["op"]
            if op == "load":
                result = {"names": load(message["code"], handle, reply)}
            elif op == "call":
                fn = objects[message["ref"]]
                args = decode(message["args"], objects.__getitem__)
                kwargs = decode(message["kwargs"], objects.__getitem__)
                result = {"value": reply(fn(*args, **kwargs))}
            elif op == "getattr":
                result = {"value": reply(getattr(objects[message["ref"]], message["name"]))}
            else:
                raise ValueError("unknown operation %r" % op)
            answer = {"ok": result}
        except BaseException as e:  # the candidate's SystemExit too: it is its result
            answer = {"raise": [type(e).__name__, str(e)[:2000]]}
        channel.send(answer)


def load(code, handle, reply):
    """Run the candidate's code as ``__main__`` and describe what it defined."""
    module = types.ModuleType("__main__")
    module.__file__ = os.path.abspath("main.py")
    sys.modules["__main__"] = module
    exec(compile(code, "main.py", "exec"), module.__dict__)
    names = {}
    for name, value in list(module.__dict__.items()):
        if name.startswith("__"):
            continue
        where = getattr(value, "__module__", None)
        if isinstance(value, types.ModuleType):
            names[name] = ["module", value.__name__]
        elif isinstance(where, str) and where != "__main__" and hasattr(value, "__qualname__"):
            names[name] = ["attr", where, value.__qualname__]
        else:
            names[name] = ["value", reply(value)]
    return names


# ---------------------------------------------------------------- the judge's side


def judge(payload_fd, verdict_fd):
    with os.fdopen(payload_fd, "rb") as f:
        payload = json.loads(f.read())
    undumpable()
    limits = payload["limits"]
    for name, value in (
        ("RLIMIT_CPU", limits["cpu_s"]),
        ("RLIMIT_AS", limits["memory_bytes"]),
        ("RLIMIT_FSIZE", limits["file_bytes"]),
        ("RLIMIT_NPROC", limits["max_processes"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))
    ran, total, reason = 0, 0, ""
    try:
        statements = ast.parse(payload["tests"], "tests").body
        total = len(statements)
        ran, reason = run_tests(payload["code"], statements)
    except Exception as e:
        reason = "%s: %s" % (type(e).__name__, e)
    verdict = {"token": payload["token"], "ran": ran, "of": total, "reason": reason[:2000]}
    os.write(verdict_fd, json.dumps(verdict).encode() + b"\n")
    os.close(verdict_fd)


def undumpable():
    """Make this process's memory, fds and environment unreadable to the candidate (same
    uid): no ``/proc/<pid>/mem``, ``/proc/<pid>/fd`` or ptrace. Without it there is no verdict."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, 0
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def run_tests(code, statements):
    """Start the candidate, load its code, run each test statement; (statements run, why it stopped)."""
    mine, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), "candidate", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    channel = Channel(mine)
    try:
        namespace = {"__name__": "__tests__", "__builtins__": builtins}
        namespace.update(bind(call(channel, {"op": "load", "code": code})["names"], channel))
        for ran, statement in enumerate(statements):
            try:
                exec(compile(ast.Module(body=[statement], type_ignores=[]), "tests", "exec"), namespace)
            except Exception as e:
                return ran, "tests line %d: %s: %s" % (statement.lineno, type(e).__name__, e)
        return len(statements), ""
    except Exception as e:
        return 0, "%s: %s" % (type(e).__name__, e)
    finally:
        process.kill()


def call(channel, message):
    channel.send(message)
    answer = channel.receive()
    if type(answer) is not dict or len(answer) != 1:
        raise CandidateGone("malformed answer")
    if "raise" in answer:
        name, text = (str(x) for x in answer["raise"][:2])
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            raise cls(text)
        raise CandidateError("%s: %s" % (name, text))
    return answer["ok"]


def bind(names, channel):
    """The test namespace's view of the candidate's globals. A builtin's name is never taken
    from the candidate; modules and library functions it imported are the judge's own."""
    bound = {}
    for name, (kind, *rest) in names.items():
        if hasattr(builtins, name) or name.startswith("__"):
            continue
        try:
            if kind == "module":
                bound[name] = importlib.import_module(rest[0])
                continue
            if kind == "attr":
                value = importlib.import_module(rest[0])
                for part in rest[1].split("."):
                    value = getattr(value, part)
                bound[name] = value
                continue
        except Exception:
            pass  # not importable here: not bound
        if kind == "value":
            bound[name] = decode(rest[0], lambda ref: Remote(channel, ref))
    return bound


class Remote:
    """A candidate's object in the judge: call it, read an attribute; no truth value, no
    equality but identity."""

    __slots__ = ("_channel", "_ref")

    def __init__(self, channel, ref):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_ref", ref)

    def _value(self, answer):
        return decode(answer["value"], lambda ref: Remote(self._channel, ref))

    def __call__(self, *args, **kwargs):
        def handle(value):
            return value._ref if type(value) is Remote else None

        message = {"op": "call", "ref": self._ref, "args": encode(list(args), handle), "kwargs": encode(kwargs, handle)}
        return self._value(call(self._channel, message))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._value(call(self._channel, {"op": "getattr", "ref": self._ref, "name": name}))

    def __bool__(self):
        raise TypeError("an object of the candidate's own type has no truth value in the tests")

    def __repr__(self):
        return "<candidate object %d>" % self._ref


if __name__ == "__main__":
    if sys.argv[1] == "judge":
        judge(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "candidate":
        candidate(int(sys.argv[2]))
