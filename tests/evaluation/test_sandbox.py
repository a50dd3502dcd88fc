"""The sandbox probed as an adversary would: each attack on the score or the machine is run
against a wrong solution, and its effect is checked from outside (score 0, the canary file
untouched, the listener silent, no process left), beside a correct solution scoring 1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cycleqd.errors import ConfigError
from cycleqd.evaluation import sandbox
from cycleqd.evaluation.sandbox import Limits, run_tests
from cycleqd.tasks.jsonl import JsonlTask

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CYCLEQD_REQUIRE_SANDBOX"),
    reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap",
)

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
WRONG = "def add(a, b):\n    return a - b\n"
LIMITS = Limits(timeout_s=5, memory_mb=512)


def score(code: str, tests: str = TESTS, limits: Limits = LIMITS) -> bool:
    return run_tests(code, tests, limits).passed


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() and int(pid) != os.getpid():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_correct_solution_scores_1_and_a_wrong_one_0():
    assert score("def add(a, b):\n    return a + b\n")
    assert not score(WRONG)
    outcome = run_tests(WRONG, TESTS, LIMITS)
    assert outcome.verdict is not None and (outcome.verdict.ran, outcome.verdict.of) == (0, 2)
    assert "tests line 1: AssertionError" in outcome.verdict.reason


def test_objects_of_the_candidates_own_classes_cross_by_reference():
    code = "class Pair:\n    def __init__(self, a, b):\n        self.a, self.b = a, b\ndef first(p):\n    return p.a\n"
    assert score(code, "assert first(Pair(1, 2)) == 1\nassert Pair(3, 4).b == 4\n")
    code = "import math\nfrom collections import Counter\ndef f(x):\n    return sorted(Counter(x).items())\n"
    assert score(code, "assert f('aab') == [('a', 2), ('b', 1)]\nassert math.isclose(1.0, 1.0)\n")
    # a builtin exception crosses as itself, so tests that expect one work
    code = "def f(x):\n    raise ValueError('no')\n"
    assert score(code, "try:\n    f(1)\n    ok = False\nexcept ValueError:\n    ok = True\nassert ok\n")


FORGERIES = {
    "os._exit(0)": "import os\nos._exit(0)\n",
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)\n" + WRONG,
    "__eq__ always true": "class Any:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Any()\n",
    "int subclass": "class I(int):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return I(0)\n",
    "printed verdict": WRONG + 'print(\'2/2 passed\'); print(\'{"token": "x", "ran": 2, "of": 2, "reason": ""}\')\n',
    "writes to every fd": WRONG
    + 'import os\nfor fd in range(100):\n    try:\n        os.write(fd, b\'{"ran": 2, "of": 2, "reason": ""}\\n\')\n'
    "    except OSError:\n        pass\n",
    "the judge's fds": WRONG
    + "import os\nfor pid in os.listdir('/proc'):\n    try:\n        for fd in os.listdir(f'/proc/{pid}/fd'):\n"
    "            os.write(os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY), b'{\"ran\": 2, \"of\": 2}\\n')\n"
    "    except OSError:\n        pass\n",
    "shadows a builtin": "def len(x):\n    return 3\ndef add(a, b):\n    return [0]\n",
    "kills the judge": WRONG
    + "import os, signal\nfor pid in range(1, 50):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
    "    except OSError:\n        pass\n",
}


@pytest.mark.parametrize("how", list(FORGERIES))
def test_a_wrong_solution_cannot_forge_a_pass(how: str):
    tests = TESTS if how != "shadows a builtin" else "assert len(add(1, 2)) == 3\n"
    assert not score(FORGERIES[how], tests)


def test_a_truthy_object_does_not_pass_a_bare_assert():
    code = "class Yes:\n    def __bool__(self):\n        return True\ndef is_prime(n):\n    return Yes()\n"
    assert not score(code, "assert is_prime(7)\n")
    assert score("def is_prime(n):\n    return n in (2, 3, 5, 7)\n", "assert is_prime(7)\nassert not is_prime(8)\n")


# the candidate searches for a string only its tests hold (split so its own code does not)
SEARCH = """
import os
def found(marker):
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for part in ('cmdline', 'environ'):
            try:
                if marker.encode() in open(f'/proc/{pid}/{part}', 'rb').read():
                    return True
            except OSError:
                pass
        try:
            mem = open(f'/proc/{pid}/mem', 'rb')
            for line in open(f'/proc/{pid}/maps'):
                lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
                mem.seek(lo)
                if marker.encode() in mem.read(hi - lo):
                    return True
        except (OSError, ValueError, OverflowError):
            pass
        try:
            for fd in os.listdir(f'/proc/{pid}/fd'):
                if marker.encode() in open(f'/proc/{pid}/fd/{fd}', 'rb').read():
                    return True
        except OSError:
            pass
    for top in ('/', '/scratch', '/tmp', '/dev/shm', '/proc/self/cwd'):
        for root, dirs, files in os.walk(top):
            if root.startswith(('/proc', '/usr', '/sys')):
                dirs[:] = []
                continue
            for name in files:
                try:
                    if marker.encode() in open(os.path.join(root, name), 'rb').read():
                        return True
                except OSError:
                    pass
    return False
def add(a, b):
    return a - b
"""


def test_the_candidate_cannot_read_its_own_tests_nor_another_items():
    other = {}

    def run_other():  # another item scored at the same time, its tests holding OTHER-ITEM-7
        other["outcome"] = run_tests("import time\ntime.sleep(3)\n", "# OTHER-ITEM-7\nassert True\n", LIMITS)

    thread = threading.Thread(target=run_other)
    thread.start()
    time.sleep(0.5)
    own = "assert found('HIDDEN-' + 'TEST-3')  # HIDDEN-TEST-3\n"
    assert not score(SEARCH, own)
    assert not score(SEARCH, "assert found('OTHER-' + 'ITEM-7')\n")
    thread.join()
    assert other["outcome"].passed  # the other item ran beside it
    # the search itself works: it finds a string in a file it may read (the judge's public code)
    assert score(SEARCH, "assert found('def ' + 'judge(')\n")


def test_the_host_files_are_neither_visible_nor_writable(tmp_path: Path):
    canary, secret = tmp_path / "canary.txt", tmp_path / "secret.txt"
    canary.write_text("keep me")
    secret.write_text("hunter2")
    secret.chmod(0o644)
    tmp_path.chmod(0o755)
    attacks = f"""
import os, shutil
def attempt(action):
    try:
        action()
    except OSError:
        pass
attempt(lambda: open({str(canary)!r}, 'w').write('gone'))
attempt(lambda: os.remove({str(canary)!r}))
attempt(lambda: os.write(os.open('escaped', os.O_CREAT | os.O_WRONLY, dir_fd=os.open({str(tmp_path)!r}, os.O_RDONLY)), b'x'))
attempt(lambda: shutil.copy('/harness.py', {str(tmp_path)!r}))
def read():
    return open({str(secret)!r}).read()
"""
    assert not score(attacks, "assert read() == 'hunter2'\n")
    assert canary.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt", "secret.txt"]


def test_the_evaluators_environment_is_invisible(monkeypatch):
    monkeypatch.setenv("CYCLEQD_TEST_SECRET", "hunter2")
    code = SEARCH + "import os\ndef env():\n    return os.environ.get('CYCLEQD_TEST_SECRET')\n"
    assert not score(code, "assert env() == 'hunter2'\n")
    assert not score(code, "assert found('hun' + 'ter2')\n")


def test_processes_and_daemons_do_not_outlive_the_run(tmp_path: Path):
    canary = tmp_path / "canary.txt"
    canary.write_text("keep me")
    code = (
        f"""
import os, sys, _posixsubprocess
try:
    _posixsubprocess.fork_exec(['/bin/sh', '-c', 'echo pwned > {canary}'], [b'/bin/sh'], True, (), None, None,
                               -1, -1, -1, -1, -1, -1, -1, -1, False, False, -1, None, None, None, -1, None, False)
except Exception:
    pass
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(300)', 'DAEMON-MARKER-9'])
    os._exit(0)
"""
        + WRONG
    )
    assert not score(code)
    time.sleep(0.5)
    assert processes_with("DAEMON-MARKER-9") == []
    assert canary.read_text() == "keep me"


def test_processes_past_the_limit_are_refused():
    code = """
import os, time
def started():
    n = 0
    for _ in range(50):
        try:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
        except OSError:
            break
    return n
"""
    outcome = run_tests(code, "assert started() == 50\n", Limits(timeout_s=10, max_processes=8))
    assert not outcome.passed and outcome.verdict is not None
    assert "AssertionError" in outcome.verdict.reason  # refused by the limit, not timed out
    n = run_tests(code, "print('started', started())\n", Limits(timeout_s=10, max_processes=8)).stdout
    assert "started" in n and int(n.split()[-1]) <= 8


def test_signals_cannot_reach_the_host():
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        code = (
            f"""
import os, signal
for attempt in (lambda: os.kill({victim.pid}, signal.SIGKILL), lambda: os.kill({os.getpid()}, signal.SIGTERM),
                lambda: signal.pidfd_send_signal(os.pidfd_open({victim.pid}), signal.SIGKILL), lambda: os.kill(-1, signal.SIGKILL)):
    try:
        attempt()
    except OSError:
        pass
"""
            + WRONG
        )
        assert not score(code)
        assert victim.poll() is None  # still running
    finally:
        victim.kill()
        victim.wait()


def test_the_network_is_unreachable():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp.bind(("127.0.0.1", 0))
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp.settimeout(0.5)
    tcp.settimeout(0.5)
    code = (
        f"""
import socket
def attempt(action):
    try:
        action()
    except OSError:
        pass
attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'leak', ('127.0.0.1', {udp.getsockname()[1]})))
attempt(lambda: socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=1).sendall(b'leak'))
attempt(lambda: socket.socket().sendto(b'leak', socket.MSG_FASTOPEN, ('127.0.0.1', {tcp.getsockname()[1]})))
"""
        + WRONG
    )
    try:
        assert not score(code)
        with pytest.raises(TimeoutError):
            udp.recvfrom(100)
        with pytest.raises(TimeoutError):
            tcp.accept()
    finally:
        udp.close()
        tcp.close()


def test_the_deadline_holds_against_a_child_that_keeps_the_pipes():
    code = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', 'PIPE-HOLDER-5'], start_new_session=True)
time.sleep(300)
"""
    start = time.monotonic()
    outcome = run_tests(code, TESTS, Limits(timeout_s=2))
    elapsed = time.monotonic() - start
    assert outcome.timed_out and not outcome.passed
    assert elapsed < 60  # the design's bound is 2 s + 1 s (benchmarks/sandbox.py); wide here: a loaded machine is slow
    assert processes_with("PIPE-HOLDER-5") == []


def test_memory_and_disk_are_capped():
    assert not score("blob = bytearray(10**11)\ndef add(a, b):\n    return a + b\n")
    code = """
def written():
    total = 0
    for i in range(40):
        try:
            with open(f'f{i}', 'wb') as f:
                for _ in range(4):
                    f.write(b'x' * 2**20)
                    total += 2**20
        except OSError:
            return total
    return total
"""
    outcome = run_tests(code, "print('written', written())\n", Limits(timeout_s=10, disk_mb=16, file_mb=4))
    assert outcome.passed
    assert int(outcome.stdout.split()[-1]) <= 16 * 2**20  # 160 MiB asked, the tmpfs holds 16


def test_a_missing_bubblewrap_is_named_at_validation(tmp_path: Path, monkeypatch):
    data = tmp_path / "code.jsonl"
    data.write_text(
        '{"split": "opt", "prompt": "p", "tests": "assert True"}\n{"split": "test", "prompt": "p", "tests": "assert True"}\n'
    )
    monkeypatch.setattr(shutil, "which", lambda name: None)
    sandbox._plan.cache_clear()
    sandbox._check.cache_clear()
    try:
        with pytest.raises(
            ConfigError, match=r"^sandbox: .*bubblewrap \(bwrap\), which is not installed: apt-get install bubblewrap"
        ):
            JsonlTask(name="coding", path=str(data), scorer="python_tests").prepare()
    finally:
        sandbox._plan.cache_clear()
        sandbox._check.cache_clear()


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root is there a drop to nobody to refuse")
def test_as_root_an_interpreter_nobody_cannot_run_is_refused_naming_allow_root(tmp_path: Path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    python = private / "python3"
    python.symlink_to(os.path.realpath("/usr/bin/python3"))
    # the symlink resolves outside: copy the binary instead, inside a directory nobody cannot search
    python.unlink()
    shutil.copy(os.path.realpath("/usr/bin/python3"), python)
    with pytest.raises(
        ConfigError, match=r"^allow_root: .*sandbox.allow_root=true to run model-written code as root knowingly"
    ):
        sandbox.check(Limits(python=str(python)))


def test_an_interrupted_call_takes_its_run_down():
    import signal

    def alarm(signum, frame):
        raise TimeoutError("the evaluator's deadline")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', 'ALARMED-4'])\n"
        "time.sleep(300)\n"
    )
    try:
        with pytest.raises(TimeoutError):
            run_tests(code, TESTS, Limits(timeout_s=60))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    time.sleep(0.5)
    assert processes_with("ALARMED-4") == []
