#!/usr/bin/env python3
"""Tests for distcc.py, in the order of its sections.

Run them all with `python3 test_distcc.py` (the run ends with a line
"N passed, N failed, N skipped").  The end-to-end tests start their own
OpenSSH server on a free loopback port with throwaway keys; when it cannot
start they skip, except under CI=true, where they fail.  Tests that need
real-world sources download them from PyPI once (pinned by checksum) into
~/.cache/distcc.py-tests.
"""

import errno
import glob
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import unittest
import zlib
from unittest import mock

import distcc

HERE = os.path.dirname(os.path.abspath(__file__))
DISTCC_PY = os.path.join(HERE, "distcc.py")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TIMEOUT = 120          # seconds any single command of a test may take

HAVE_GCC = shutil.which("gcc") is not None and shutil.which("g++") is not None
# The frame header as the module docstring specifies it, kept apart from
# distcc.py's own code for it.
HEADER = struct.Struct(">2sBBII")

# Real-world sources: Brotli's C library from its PyPI source distribution.
BROTLI = "brotli-1.2.1"
BROTLI_URL = ("https://files.pythonhosted.org/packages/cf/81/1546c983678a9b4"
              "e77cb4718eaedd1b2caf24a6cdbf1eb8775938d22aff7/%s.tar.gz"
              % BROTLI)
BROTLI_SHA256 = \
    "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de"
CACHE_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or
                         os.path.expanduser("~/.cache"), "distcc.py-tests")


def env_without_distcc(**extra):
    """Return os.environ without DISTCC_* settings, plus EXTRA."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DISTCC_")}
    env.update(extra)
    return env


def run(argv, **kw):
    """Run ARGV with a timeout; return the CompletedProcess."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("timeout", TIMEOUT)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(argv, **kw)


def process_alive(pid):
    """Whether PID runs (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def end_process(pid, timeout=5.0):
    """SIGTERM PID (which we started), then SIGKILL; reap it if it is ours."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process_alive(pid):
            time.sleep(0.02)
        if not process_alive(pid):
            break
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its own parent (or init) reaps it


def reap_orphans():
    """Reap the zombies among our children: processes that ended after
    their parent (a warm process's spare, a relay's ssh) and came to us,
    the subreaper."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            try:
                os.waitpid(int(name), os.WNOHANG)
            except ChildProcessError:
                pass  # reaped by its Popen meanwhile


def child_pids(pid):
    """Return the pids whose parent is PID (Linux /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(name))
    return found


def all_pids():
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def cmdline(pid):
    """Return PID's argv (empty if it is gone)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def become_subreaper():
    """Adopt orphans (relays, ssh masters) so the tests can reap them."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)       # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # without it, init reaps the orphans instead

# ---------------------------------------------------------------------------
# A private OpenSSH server on loopback


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class SshServer:
    """A real sshd on 127.0.0.1 with throwaway keys, and a client config."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="distccpy-sshd-")
        self.port = free_port()
        self.dead_port = free_port()
        self.proc = None
        self.log = os.path.join(self.dir, "sshd.log")
        self.config = os.path.join(self.dir, "ssh_config")

    def start(self):
        """Start sshd; raise RuntimeError with the reason if it cannot."""
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.path.exists(sshd) or not shutil.which("ssh"):
            raise RuntimeError("OpenSSH server or client is not installed "
                               "(apt-get install openssh-server "
                               "openssh-client)")
        if os.getuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        d = self.dir
        for name in ("host_key", "client_key"):
            r = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                     os.path.join(d, name)])
            if r.returncode:
                raise RuntimeError("ssh-keygen failed: %s" % r.stderr)
        r = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                 os.path.join(d, "restricted_key")])
        if r.returncode:
            raise RuntimeError("ssh-keygen failed: %s" % r.stderr)
        with open(os.path.join(d, "authorized_keys"), "w") as out:
            with open(os.path.join(d, "client_key.pub")) as f:
                out.write(f.read())
            with open(os.path.join(d, "restricted_key.pub")) as f:
                # What a build host's admin writes for a compile-only key.
                out.write('command="%s %s -i",restrict %s' % (
                    sys.executable, DISTCC_PY, f.read()))
        with open(os.path.join(d, "sshd_config"), "w") as f:
            f.write("""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
LogLevel VERBOSE
MaxStartups 100:30:200
PrintMotd no
""".format(port=self.port, d=d))
        with open(os.path.join(d, "host_key.pub")) as f:
            host_pub = f.read().split()
        with open(os.path.join(d, "known_hosts"), "w") as f:
            f.write("[127.0.0.1]:%d %s %s\n" % (self.port, host_pub[0],
                                                 host_pub[1]))
        import pwd
        user = pwd.getpwuid(os.getuid()).pw_name
        with open(self.config, "w") as f:
            for name, port, key in (
                    ("distcc-test", self.port, "client_key"),
                    ("distcc-restricted", self.port, "restricted_key"),
                    ("distcc-dead", self.dead_port, "client_key")):
                f.write("""\
Host {name}
  HostName 127.0.0.1
  Port {port}
  User {user}
  IdentityFile {d}/{key}
  IdentitiesOnly yes
  UserKnownHostsFile {d}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  PasswordAuthentication no
  ConnectTimeout 5
  LogLevel ERROR
""".format(name=name, port=port, user=user, d=d, key=key))
        self.proc = subprocess.Popen(
            [sshd, "-D", "-f", os.path.join(d, "sshd_config"), "-E",
             self.log], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError("sshd exited with %d: %s%s" % (
                    self.proc.returncode, err, self.read_log()[-500:]))
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("sshd did not listen within 10 s")
        r = run(["ssh", "-F", self.config, "-o", "BatchMode=yes",
                 "distcc-test", "true"], timeout=30)
        if r.returncode:
            raise RuntimeError("ssh to the test sshd failed: %s"
                               % r.stderr.decode(errors="replace"))

    def read_log(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def auth_count(self):
        """How many ssh authentications sshd has accepted so far."""
        return self.read_log().count("Accepted publickey")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def host(self, name="distcc-test"):
        """The DISTCC_HOSTS entry for this server."""
        return "@%s:%s" % (name, DISTCC_PY)

    def ssh_command(self):
        return "ssh -F %s" % self.config


SSHD = None                # the shared server, started once
SSHD_ERROR = None          # why it could not start


def setUpModule():
    become_subreaper()


def tearDownModule():
    global SSHD
    if SSHD is not None:
        SSHD.stop()
        SSHD = None


def require_sshd(test):
    """Return the shared SshServer, starting it on first use; skip (fail in
    CI) when it cannot start."""
    global SSHD, SSHD_ERROR
    if SSHD is None and SSHD_ERROR is None:
        server = SshServer()
        try:
            server.start()
            SSHD = server
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            server.stop()
            SSHD_ERROR = str(e)
    if SSHD is None:
        if IN_CI:
            test.fail("the ssh end-to-end tests could not run: %s"
                      % SSHD_ERROR)
        test.skipTest("no test sshd: %s" % SSHD_ERROR)
    return SSHD


def fetch_brotli(test):
    """Return the path of Brotli's unpacked c/ directory (downloaded once)."""
    target = os.path.join(CACHE_DIR, BROTLI)
    if os.path.isdir(os.path.join(target, "c")):
        return os.path.join(target, "c")
    os.makedirs(CACHE_DIR, exist_ok=True)
    import urllib.request
    try:
        with urllib.request.urlopen(BROTLI_URL, timeout=60) as r:
            data = r.read()
    except OSError as e:
        if IN_CI:
            test.fail("cannot download %s: %s" % (BROTLI_URL, e))
        test.skipTest("PyPI is not reachable (%s)" % e)
    digest = hashlib.sha256(data).hexdigest()
    if digest != BROTLI_SHA256:
        test.fail("%s.tar.gz has sha256 %s, expected %s"
                  % (BROTLI, digest, BROTLI_SHA256))
    tmp = tempfile.mkdtemp(dir=CACHE_DIR)
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(BROTLI + "/c/") and
                       (m.isfile() or m.isdir()) and ".." not in m.name]
            tar.extractall(tmp, members=members)
        os.rename(os.path.join(tmp, BROTLI), target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(target, "c")

# ---------------------------------------------------------------------------
# Sources used by the compile tests

C_SOURCE = r"""
#include <stdio.h>
#include <string.h>
#include "local.h"
#define SQUARE(x) ((x) * (x))
static int helper(int a) { return SQUARE(a) + LOCAL_OFFSET; }
int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : __FILE__;
    printf("%d %zu %s\n", helper(argc), strlen(name), __BASE_FILE__);
    return 0;
}
"""
LOCAL_H = "#define LOCAL_OFFSET 42\n"

CXX_SOURCE = r"""
#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>
template <class T> T total(const std::vector<T> &v) {
    T sum{};
    for (const auto &x : v) sum += x;
    return sum;
}
struct Shape { virtual ~Shape() = default; virtual double area() const = 0; };
struct Square : Shape {
    double s;
    explicit Square(double s) : s(s) {}
    double area() const override { return s * s; }
};
int main() {
    std::map<std::string, int> counts;
    std::regex word("[a-z]+");
    std::string text = "the quick brown fox jumps over the lazy dog";
    for (auto it = std::sregex_iterator(text.begin(), text.end(), word);
         it != std::sregex_iterator(); ++it)
        counts[it->str()]++;
    std::vector<std::unique_ptr<Shape>> shapes;
    for (int i = 1; i < 5; ++i) shapes.push_back(std::make_unique<Square>(i));
    std::vector<double> areas;
    for (auto &s : shapes) areas.push_back(s->area());
    std::sort(areas.begin(), areas.end());
    std::cout << total(areas) << " " << counts["the"] << std::endl;
}
"""

CXX_LIGHT_SOURCE = r"""
#include <string>
#include <vector>
#include "local.h"
template <class T> struct Box { T v; T get() const { return v + LOCAL_OFFSET; } };
int use(const std::vector<int> &v, const std::string &s) {
    Box<int> b{static_cast<int>(v.size() + s.size())};
    return b.get();
}
"""

ERROR_SOURCE = r"""
#include <stdio.h>
#define BAD(x) ((x) + undefined_variable)
int main(void) {
    int unused;
    return BAD(1);
}
"""

WARNING_SOURCE = r"""
#warning this warning comes from the preprocessor
int f(int x) {
    int unused;
    return x;
}
"""

# A project header whose line a -Wextra warning quotes.
SIGN_HEADER = """static inline int sign(unsigned u, int i) {
    return u < i;
}
"""

# A type of the main file with a member from an anonymous namespace is
# fine; in a header it earns -Wsubobject-linkage: the host must know
# which file is the main one.
ANON_HEADER = "namespace { struct Hdr { int y; }; }\n"
SUBOBJECT_SOURCE = """#include "anon.h"
namespace { struct Anon { int x; }; }
struct Holder { Anon a; Hdr h; };
int f(Holder *h) { return h->a.x + h->h.y + 0.5; }
"""

# ---------------------------------------------------------------------------
# Framing


class TestFraming(unittest.TestCase):

    def roundtrip(self, kind, job_id, parts):
        buf = io.BytesIO()
        distcc.write_frame(buf, kind, job_id, parts)
        buf.seek(0)
        frame = distcc.read_frame(io.BufferedReader(buf))
        return frame

    def test_hung_up_tells_a_closed_peer_from_a_finished_writer(self):
        import socket
        relay, wrapper = socket.socketpair(socket.AF_UNIX)
        try:
            self.assertFalse(distcc.hung_up(relay))
            wrapper.shutdown(socket.SHUT_WR)      # a job sent, answer awaited
            self.assertFalse(distcc.hung_up(relay))
            wrapper.close()
            self.assertTrue(distcc.hung_up(relay))
        finally:
            relay.close()
            wrapper.close()

    def test_roundtrip(self):
        cases = [
            # kind, job id, parts
            (distcc.JOB, 0, [b""]),
            (distcc.RESULT, 7, [b"abc", b"def"]),
            (distcc.ERROR, 0xFFFFFFFE, [b"x" * 100000]),
        ]
        for kind, job_id, parts in cases:
            got = self.roundtrip(kind, job_id, parts)
            want = (kind, job_id, b"".join(parts))
            self.assertEqual((got[0], got[1], bytes(got[2])), want,
                             "frame %r" % ((kind, job_id),))

    def test_clean_eof_between_frames(self):
        self.assertIsNone(distcc.read_frame(io.BytesIO(b"")))

    def test_bad_input(self):
        good = HEADER.pack(distcc.MAGIC, distcc.JOB, 0, 1, 5) + b"hello"
        cases = [
            # input, words the error must contain
            (b"XX" + good[2:], "magic"),
            (good[:7], "expected 11 bytes, received 6"),
            (good[:-2], "expected 5 bytes, received 3"),
            (HEADER.pack(distcc.MAGIC, 99, 0, 1, 0), "unknown frame"),
            (HEADER.pack(distcc.MAGIC, distcc.JOB, 0, 1,
                                distcc.MAX_FRAME + 1), "over the"),
        ]
        for data, words in cases:
            with self.assertRaises(distcc.ProtocolError, msg=repr(data)) as cm:
                distcc.read_frame(io.BytesIO(data))
            self.assertIn(words, str(cm.exception), repr(data))

    def test_body_roundtrip(self):
        parts = distcc.pack_body({"a": 1}, [b"one", b"", b"three"])
        meta, blobs = distcc.unpack_body(b"".join(parts))
        self.assertEqual(meta["a"], 1)
        self.assertEqual([bytes(b) for b in blobs], [b"one", b"", b"three"])

    def test_bad_bodies(self):
        ok = b"".join(distcc.pack_body({"a": 1}, [b"xy"]))
        for body in (b"", b"\x00\x00\x00\x09{}", ok[:-1], ok + b"z",
                     struct.pack(">I", 2) + b"[]",
                     struct.pack(">I", 3) + b"{x}"):
            with self.assertRaises(distcc.ProtocolError, msg=repr(body)):
                distcc.unpack_body(body)

    def test_decompress_limits(self):
        data = zlib.compress(b"a" * 1000)
        self.assertEqual(distcc.decompress(data), b"a" * 1000)
        for bad, limit in ((data[:-3], 10 ** 6), (b"junk", 10 ** 6),
                           (data, 999)):
            with self.assertRaises(distcc.ProtocolError):
                distcc.decompress(bad, limit)

    FUZZ_ROUNDS = int(os.environ.get("DISTCC_TEST_FUZZ_ROUNDS", "3000"))

    def test_fuzz_frames_fail_only_as_protocol_errors(self):
        """Random and mutated frames: a frame, a clean EOF or a
        ProtocolError, never another exception (fixed seed)."""
        import random
        rng = random.Random(20261127)
        for i in range(self.FUZZ_ROUNDS):
            data = fuzz_input(rng)
            try:
                frame = distcc.read_frame(io.BytesIO(data))
                if frame is not None:
                    kind, _, body = frame
                    if kind == distcc.ERROR:
                        distcc.raise_error_body(body)
                    meta, blobs = distcc.unpack_body(body)
                    for blob in blobs:
                        distcc.decompress(blob, 1 << 20)
                    distcc.check_server_args(meta.get("args"))
            except distcc.DistccError:
                pass
            except Exception as e:      # noqa: BLE001  that is the bug
                self.fail("input %d %r: %r" % (i, data[:80], e))

    def test_error_body(self):
        self.assertEqual(set(distcc.ERROR_KINDS), {
            "transport", "rejected", "relay", "protocol"})
        for kind, cls in (("transport", distcc.TransportError),
                          ("rejected", distcc.Rejected),
                          ("relay", distcc.RelayLost),
                          ("protocol", distcc.ProtocolError)):
            with self.assertRaises(cls) as cm:
                distcc.raise_error_body(distcc.error_body(kind, "why"))
            self.assertIn("why", str(cm.exception))

def fuzz_input(rng):
    """One random or mutated frame for the fuzz tests."""
    parts = distcc.pack_body(
        {"compiler": "gcc", "family": "gcc", "args": ["-O2"], "mode": "-c",
         "lang": None, "source": "a.c", "cwd": "/w", "env": {}},
        [zlib.compress(b"int x;\n"), zlib.compress(b"")])
    good = HEADER.pack(distcc.MAGIC, distcc.JOB, 0, 1,
                              sum(map(len, parts))) + b"".join(parts)
    choice = rng.randrange(5)
    if choice == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
    data = bytearray(good)
    if choice == 1:                       # flip bits
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 2:                     # truncate
        del data[rng.randrange(len(data)):]
    elif choice == 3:                     # lie about a length
        pos = rng.choice([8, 12])
        data[pos:pos + 4] = struct.pack(">I", rng.getrandbits(32))
    else:                                 # splice garbage into the JSON
        pos = rng.randrange(16, 40)
        data[pos:pos] = bytes(rng.getrandbits(8)
                              for _ in range(rng.randrange(1, 6)))
    return bytes(data)

# ---------------------------------------------------------------------------
# Argument scanning

# One command line a case: (argv, remote?, input, output, reason subject).
# For local cases, input and output are what the local compiler reads and
# writes; the subject is a word the reason must contain.
SCAN_CASES = [
    # plain compiles, both spellings of -o
    ("gcc -c a.c", True, "a.c", "a.o", None),
    ("gcc -c a.c -o b.o", True, "a.c", "b.o", None),
    ("gcc -c -ob.o a.c", True, "a.c", "b.o", None),
    ("gcc -o b.o -c a.c", True, "a.c", "b.o", None),
    ("gcc -O2 -g -Wall -c src/a.c -o obj/a.o", True, "src/a.c", "obj/a.o",
     None),
    ("gcc -c src/a.c", True, "src/a.c", "a.o", None),
    ("gcc -c ../up/a.c -o ../out/a.o", True, "../up/a.c", "../out/a.o", None),
    ("gcc -c /abs/path/a.c -o /abs/out/a.o", True, "/abs/path/a.c",
     "/abs/out/a.o", None),
    ("gcc -c a.b.c", True, "a.b.c", "a.b.o", None),
    ("gcc -c dir.x/a", False, "dir.x/a", "a.o", "not a C"),
    # languages by extension
    ("g++ -c x.cpp", True, "x.cpp", "x.o", None),
    ("g++ -c x.cc", True, "x.cc", "x.o", None),
    ("g++ -c x.cxx", True, "x.cxx", "x.o", None),
    ("g++ -c x.cp", True, "x.cp", "x.o", None),
    ("g++ -c x.C", True, "x.C", "x.o", None),
    ("g++ -c x.CPP", True, "x.CPP", "x.o", None),
    ("g++ -c x.c++", True, "x.c++", "x.o", None),
    ("gcc -c x.m", True, "x.m", "x.o", None),
    ("gcc -c x.mm", True, "x.mm", "x.o", None),
    ("gcc -c x.M", True, "x.M", "x.o", None),
    ("gcc -c x.i", True, "x.i", "x.o", None),
    ("g++ -c x.ii", True, "x.ii", "x.o", None),
    ("gcc -c x.mi", True, "x.mi", "x.o", None),
    ("gcc -c x.mii", True, "x.mii", "x.o", None),
    ("gcc -c a.s", False, "a.s", "a.o", "not a C"),
    ("gcc -c a.S", False, "a.S", "a.o", "not a C"),
    ("gcc -c a.f90", False, "a.f90", "a.o", "not a C"),
    ("gcc -c lib.o", False, "lib.o", "lib.o", "not a C"),
    ("gcc -c noext", False, "noext", "noext.o", "not a C"),
    # languages by -x, joined and separate
    ("gcc -c -x c weird.txt", True, "weird.txt", "weird.o", None),
    ("gcc -c -xc weird.txt", True, "weird.txt", "weird.o", None),
    ("gcc -c -xc++ weird.txt", True, "weird.txt", "weird.o", None),
    ("gcc -c -x c++ a.c", True, "a.c", "a.o", None),
    ("gcc -c -x objective-c a.txt", True, "a.txt", "a.o", None),
    ("gcc -c -x cpp-output a.txt", True, "a.txt", "a.o", None),
    ("gcc -c -x none a.c", True, "a.c", "a.o", None),
    ("gcc -c -x assembler a.s", False, "a.s", "a.o", "-x assembler"),
    ("gcc -c -xassembler-with-cpp a.S", False, "a.S", "a.o",
     "-x assembler-with-cpp"),
    ("gcc -c -x f95 a.f", False, "a.f", "a.o", "-x f95"),
    ("gcc -c -x go a.go", False, "a.go", "a.o", "-x go"),
    # -S: distributed, the result is the .s
    ("gcc -S a.c", True, "a.c", "a.s", None),
    ("gcc -S a.c -o out.s", True, "a.c", "out.s", None),
    ("gcc -S -o- a.c", False, "a.c", "-", "standard output"),
    ("gcc -c -S a.c", False, "a.c", "a.s", "both -c and -S"),
    # preprocessor options in both spellings stay here
    ("cc -c -DX=1 -Iinc -include cfg.h a.c", True, "a.c", "a.o", None),
    ("cc -c -D X=1 -I inc -U Y a.c", True, "a.c", "a.o", None),
    ("gcc -c -isystem sys -iquote q -idirafter d a.c", True, "a.c", "a.o",
     None),
    ("gcc -c -imacros m.h -iprefix p -iwithprefixbefore w a.c", True, "a.c",
     "a.o", None),
    ("gcc -c --sysroot=/sr a.c", True, "a.c", "a.o", None),
    ("gcc -c --sysroot /sr a.c", True, "a.c", "a.o", None),
    ("gcc -c -nostdinc -undef a.c", True, "a.c", "a.o", None),
    ("gcc -c -Wp,-DX=1,-UY a.c", True, "a.c", "a.o", None),
    ("gcc -c -Wp,-P a.c", False, "a.c", "a.o", "-Wp,"),
    # dependency files
    ("gcc -c a.c -MD", True, "a.c", "a.o", None),
    ("gcc -c a.c -MMD", True, "a.c", "a.o", None),
    ("gcc -c a.c -MD -MF dep.d", True, "a.c", "a.o", None),
    ("gcc -c a.c -MD -MFdep.d", True, "a.c", "a.o", None),
    ("gcc -c a.c -MMD -MF dep.d -MT tgt", True, "a.c", "a.o", None),
    ("gcc -c a.c -MMD -MTtgt -MQ q", True, "a.c", "a.o", None),
    ("gcc -c a.c -MD -MP -MG", True, "a.c", "a.o", None),
    ("gcc -c -Wp,-MD,a.d a.c", True, "a.c", "a.o", None),
    ("gcc -c -Wp,-MMD,a.d a.c", True, "a.c", "a.o", None),
    ("gcc -M a.c", False, "a.c", None, "-M"),
    ("gcc -MM a.c", False, "a.c", None, "-MM"),
    ("gcc -MM -MF x.d a.c", False, "a.c", "x.d", "-MM"),
    ("gcc -MM -c a.c", False, "a.c", None, "-MM"),
    # link options are dropped for the host, not a reason to stay local
    ("gcc -c a.c -L/usr/lib -lm", True, "a.c", "a.o", None),
    ("gcc -c a.c -Wl,--as-needed -static", True, "a.c", "a.o", None),
    ("gcc -c a.c -Xlinker -zdefs", True, "a.c", "a.o", None),
    # compiler names
    ("x86_64-linux-gnu-gcc-12 -c a.c", True, "a.c", "a.o", None),
    ("x86_64-linux-gnu-g++ -c a.cc", True, "a.cc", "a.o", None),
    ("gcc-12 -c a.c", True, "a.c", "a.o", None),
    ("/usr/bin/gcc -c a.c", True, "a.c", "a.o", None),
    ("cc -c a.c", True, "a.c", "a.o", None),
    ("c++ -c a.cc", True, "a.cc", "a.o", None),
    ("clang -c a.c -O2", True, "a.c", "a.o", None),
    ("clang++-14 -c a.cc -O2", True, "a.cc", "a.o", None),
    ("clang -c -g a.c", False, "a.c", "a.o", "clang -g"),
    ("clang -c -g0 a.c", True, "a.c", "a.o", None),
    ("clang -c -g -gdwarf-4 a.c", True, "a.c", "a.o", None),
    ("clang -c -gdwarf-4 -g -gdwarf-5 a.c", False, "a.c", "a.o", "DWARF 5"),
    ("clang -c -g -g0 a.c", True, "a.c", "a.o", None),
    # not compiling to an object
    ("gcc a.c -o a", False, "a.c", "a", "links"),
    ("gcc a.c", False, "a.c", "a.out", "links"),
    ("gcc a.o b.o -o prog", False, ["a.o", "b.o"], "prog", "links"),
    ("gcc -E a.c", False, "a.c", None, "-E"),
    ("gcc -E a.c -o a.i", False, "a.c", "a.i", "-E"),
    ("gcc -c", False, None, None, "no source"),
    ("gcc -c -O2", False, None, None, "no source"),
    ("gcc -c a.c b.c", False, ["a.c", "b.c"], None, "2 source"),
    ("gcc -c -", False, "-", "-.o", "standard input"),
    ("gcc -c a.c -o -", False, "a.c", "-", "standard output"),
    ("gcc -fsyntax-only a.c", False, "a.c", None, "-fsyntax-only"),
    ("gcc -c a.c -o", False, "a.c", "a.o", "-o has no value"),
    ("gcc -c a.c -x", False, "a.c", "a.o", "-x"),
    # this machine's CPU
    ("gcc -c -march=native a.c", False, "a.c", "a.o", "-march=native"),
    ("gcc -c -mtune=native a.c", False, "a.c", "a.o", "-mtune=native"),
    ("gcc -c -mcpu=native a.c", False, "a.c", "a.o", "-mcpu=native"),
    # profiles and coverage read or write files here
    ("gcc -c -fprofile-arcs a.c", False, "a.c", "a.o", "-fprofile-arcs"),
    ("gcc -c -ftest-coverage a.c", False, "a.c", "a.o", "-ftest-coverage"),
    ("gcc -c --coverage a.c", False, "a.c", "a.o", "--coverage"),
    ("gcc -c -fprofile-generate a.c", False, "a.c", "a.o",
     "-fprofile-generate"),
    ("gcc -c -fprofile-generate=dir a.c", False, "a.c", "a.o",
     "-fprofile-generate"),
    ("gcc -c -fprofile-use a.c", False, "a.c", "a.o", "-fprofile-use"),
    ("gcc -c -fprofile-use=x a.c", False, "a.c", "a.o", "-fprofile-use"),
    ("gcc -c -fauto-profile=p a.c", False, "a.c", "a.o", "-fauto-profile"),
    ("clang -c -fprofile-instr-generate a.c", False, "a.c", "a.o",
     "-fprofile-instr-generate"),
    ("gcc -c -frepo a.cc", False, "a.cc", "a.o", "-frepo"),
    # host files and programs: never on the host
    ("gcc -c -fplugin=x.so a.c", False, "a.c", "a.o", "-fplugin"),
    ("gcc -c -fplugin-arg-x-y=z a.c", False, "a.c", "a.o", "-fplugin"),
    ("gcc -c -specs=x a.c", False, "a.c", "a.o", "-specs"),
    ("gcc -c --specs=x a.c", False, "a.c", "a.o", "-specs"),
    ("gcc -c -B/opt/bin a.c", False, "a.c", "a.o", "-B"),
    ("gcc -c -B /opt/bin a.c", False, "a.c", "a.o", "-B"),
    ("gcc -c @args a.c", False, "a.c", "a.o", "@file"),
    ("gcc -c -wrapper gdb,--args a.c", False, "a.c", "a.o", "-wrapper"),
    ("gcc -c -Xclang -load a.c", False, "a.c", "a.o", "-Xclang"),
    ("gcc -c -Wa,-adhln=a.lst a.c", False, "a.c", "a.o", "-Wa,-adhln"),
    ("gcc -c -Wa,--noexecstack,-alh a.c", False, "a.c", "a.o", "-Wa,-alh"),
    ("gcc -c -Wa,--noexecstack a.c", True, "a.c", "a.o", None),
    ("gcc -c -Xassembler -a a.c", False, "a.c", "a.o", "-Xassembler"),
    ("clang -c -fsanitize-ignorelist=x.txt a.c", False, "a.c", "a.o",
     "-fsanitize-ignorelist"),
    # side outputs that are not shipped back
    ("gcc -c -save-temps a.c", False, "a.c", "a.o", "-save-temps"),
    ("gcc -c -save-temps=obj a.c", False, "a.c", "a.o", "-save-temps"),
    ("gcc -c -g -gsplit-dwarf a.c", True, "a.c", "a.o", None),
    ("gcc -c -g -gsplit-dwarf a.c -o /abs/a.o", False, "a.c", "/abs/a.o",
     "-gsplit-dwarf"),
    ("gcc -c -fstack-usage a.c", False, "a.c", "a.o", "-fstack-usage"),
    ("gcc -c -fdump-tree-all a.c", False, "a.c", "a.o", "-fdump-"),
    ("gcc -c -fcallgraph-info a.c", False, "a.c", "a.o", "-fcallgraph-info"),
    ("gcc -c -aux-info p.h a.c", False, "a.c", "a.o", "-aux-info"),
    ("gcc -c -fopt-info-all=o.txt a.c", False, "a.c", "a.o", "-fopt-info"),
    ("gcc -c -fopt-info a.c", True, "a.c", "a.o", None),
    ("clang -c -MJ db.json a.c", False, "a.c", "a.o", "-MJ"),
    ("clang -c -ftime-trace a.c", False, "a.c", "a.o", "-ftime-trace"),
    ("gcc -c -g3 a.c", False, "a.c", "a.o", "-g3"),
    # configure's test programs
    ("gcc -c conftest.c", False, "conftest.c", "conftest.o", "configure"),
    ("gcc -c -o conftest.o conftest.cpp", False, "conftest.cpp",
     "conftest.o", "configure"),
    # code-generation options travel
    ("gcc -c -O3 -fPIC -fno-strict-aliasing -std=gnu11 a.c", True, "a.c",
     "a.o", None),
    ("gcc -c --param max-inline-insns-single=100 a.c", True, "a.c", "a.o",
     None),
    ("gcc -c -fdiagnostics-color=always a.c", True, "a.c", "a.o", None),
    ("gcc -c -ffile-prefix-map=/src=. a.c", True, "a.c", "a.o", None),
    ("clang -c -target x86_64-linux-gnu a.c", True, "a.c", "a.o", None),
    ("gcc -c -Wa,--noexecstack,--64 a.c", True, "a.c", "a.o", None),
    ("gcc -c -frandom-seed=obj/a.o a.c", True, "a.c", "a.o", None),
    ("clang -c -emit-llvm a.c", False, "a.c", "a.bc", "-emit-llvm is not"),
    ("clang -S -emit-llvm a.c", False, "a.c", "a.ll", "-emit-llvm is not"),
    # anything else is not on the allow-list the host checks too
    ("gcc -c -v a.c", False, "a.c", "a.o", "-v is not among"),
    ("gcc -c --for-assembler=-a a.c", False, "a.c", "a.o",
     "--for-assembler is not among"),
    ("gcc -c --prefix=/opt a.c", False, "a.c", "a.o", "holds '/'"),
    ("g++ -c -fmodule-mapper=x a.cc", False, "a.cc", "a.o",
     "-fmodule-mapper reads"),
    ("clang -c -fpass-plugin=p.so a.c", False, "a.c", "a.o",
     "-fpass-plugin reads"),
    ("clang -c -mllvm -x86-asm-syntax=intel a.c", False, "a.c", "a.o",
     "-mllvm reads"),
    ("gcc -c --param max-inline-insns-single=@x a.c", False, "a.c", "a.o",
     "holds '@'"),
    ("gcc -c -Wa,--gdwarf-5 a.c", False, "a.c", "a.o",
     "-Wa,--gdwarf-5 may make"),
    ("gcc -c -dumpbase x a.c", False, "a.c", "a.o", "-dumpbase is not"),
]


class TestScanArgs(unittest.TestCase):

    def check(self, line, remote, source, output, subject):
        argv = line.split()
        try:
            job = distcc.scan_args(argv)
            got = (True, job.source, job.output, None)
        except distcc.LocalOnly as e:
            job = e.job
            got = (False, job and job.source, job and job.output, str(e))
        want = (remote, source, output)
        self.assertEqual(got[:3], want, "%r: expected %r, got %r"
                         % (line, want, got))
        if subject:
            self.assertIn(subject, got[3], "%r: reason %r lacks %r"
                          % (line, got[3], subject))

    def test_table(self):
        self.assertGreater(len(SCAN_CASES), 100)
        for case in SCAN_CASES:
            with self.subTest(argv=case[0]):
                self.check(*case)

    def test_remote_args_drop_preprocessor_options(self):
        job = distcc.scan_args("gcc -O2 -DX=1 -I inc -isystem sys -c a.c "
                               "-MD -MF a.d -o a.o -g -lm".split())
        self.assertEqual(job.remote_args, ["-O2", "-g"])
        self.assertIn("-DX=1", job.cpp_args)
        self.assertIn("inc", job.cpp_args)

    def test_depfile_names(self):
        cases = [
            # command, .d file, target option the preprocessing gets
            ("gcc -c -MD src/a.c -o obj/a.o", "obj/a.d", ["-MQ", "obj/a.o"]),
            ("gcc -c -MD src/a.c", "a.d", ["-MQ", "a.o"]),
            ("gcc -S -MD src/a.c", "a.d", ["-MQ", "a.o"]),
            ("gcc -c -MMD src/a.c -o obj.d/a", "obj.d/a.d",
             ["-MQ", "obj.d/a"]),
            ("gcc -c -MD -MF x.d src/a.c -o a.o", "x.d", ["-MQ", "a.o"]),
            ("gcc -c -MD -MT t src/a.c -o a.o", "a.d", []),
        ]
        for line, depfile, target in cases:
            job = distcc.scan_args(line.split())
            self.assertEqual(job.depfile, depfile, line)
            cpp = job.cpp_args
            if target:
                i = cpp.index("-MQ")
                self.assertEqual(cpp[i:i + 2], target, line)
            else:
                self.assertNotIn("-MQ", cpp, line)

    def test_strip_builtins(self):
        text = (b'# 0 "a.c"\n# 0 "<built-in>"\n#define __STDC__ 1\n'
                b'# 0 "<built-in>"\n#define __GNUC__ 12\n'
                b'# 0 "<command-line>"\n#define X 1\nint x;\n')
        got = b"".join(bytes(p) for p in distcc.strip_builtins(text))
        self.assertEqual(got, b'# 0 "a.c"\n# 0 "<command-line>"\n'
                              b'#define X 1\nint x;\n')
        with_cwd = (b'# 0 "a.c"\n# 0 "/w//"\n# 0 "<built-in>"\n'
                    b'#define A 1\nint z;\n')
        self.assertEqual(b"".join(bytes(p) for p in
                                  distcc.strip_builtins(with_cwd)),
                         b'# 0 "a.c"\n# 0 "/w//"\nint z;\n')
        plain = b'# 1 "a.c"\nint y;\n'
        self.assertEqual(b"".join(bytes(p) for p in
                                  distcc.strip_builtins(plain)), plain)

# ---------------------------------------------------------------------------
# Hosts


class TestHosts(unittest.TestCase):

    def test_parse(self):
        cases = [
            # token, (user, hostname, limit, command, local?)
            ("@box", (None, "box", None, None, False)),
            ("me@box", ("me", "box", None, None, False)),
            ("@me@box2/4:/opt/bin/distcc.py",
             ("me", "box2", 4, "/opt/bin/distcc.py", False)),
            ("@box1/8", (None, "box1", 8, None, False)),
            ("@box:/usr/local/bin/distcc.py,lzo",
             (None, "box", None, "/usr/local/bin/distcc.py", False)),
            ("@box/3,lzo", (None, "box", 3, None, False)),
            ("localhost", (None, "localhost", None, None, True)),
            ("localhost/2", (None, "localhost", 2, None, True)),
            ("@localhost", (None, "localhost", None, None, False)),
        ]
        for token, want in cases:
            h = distcc.parse_host(token)
            got = (h.user, h.hostname, h.limit, h.command, h.is_local)
            self.assertEqual(got, want, token)

    def test_errors_name_the_token(self):
        for token in ("box", "box:3632", "@box/0", "@box/x", "@", "@/4",
                      "@box:", "localhost/x", "@me@"):
            with self.assertRaises(distcc.UsageError, msg=token) as cm:
                distcc.parse_host(token)
            self.assertIn(repr(token), str(cm.exception), token)
        with self.assertRaises(distcc.UsageError) as cm:
            distcc.parse_host("buildbox")
        self.assertIn("@buildbox", str(cm.exception))

    def test_list_syntax(self):
        hosts = distcc.parse_hosts("# comment\n@a/2  b@c # trailing\n"
                                   "--randomize localhost\n\n")
        self.assertEqual([h.spec for h in hosts], ["@a/2", "b@c", "localhost"])

    def test_choose(self):
        a, b, c = distcc.parse_hosts("localhost/2 @a/8 @b")
        cases = [
            # (host, free slots) ..., expected choice
            ([(a, 2), (b, 8), (c, 4)], b),
            ([(a, 2), (b, 2), (c, 2)], a),        # list order breaks ties
            ([(a, 0), (b, 1), (c, 3)], c),
            ([(a, 0), (b, 0)], None),
            ([], None),
        ]
        for free, want in cases:
            self.assertIs(distcc.choose_host(free), want, free)

    def test_limits_and_options(self):
        hosts = distcc.parse_hosts("--randomize --localslots_cpp=3 "
                                   "--localslots=2 localhost @a @b/7")
        self.assertTrue(hosts.randomize)
        self.assertEqual(hosts.cpp_slots, 3)
        self.assertEqual([distcc.slot_limit(h) for h in hosts], [
            distcc.DEFAULT_LOCAL_LIMIT, distcc.DEFAULT_HOST_LIMIT, 7])
        # A host that said how many CPUs it has gets one job more: it
        # waits there, ready for the first CPU that is done.
        self.assertEqual([distcc.slot_limit(h, 3) for h in hosts], [
            distcc.DEFAULT_LOCAL_LIMIT, 4, 7])
        for text in ("--localslots=x", "--frob", "--localslots_cpp=0"):
            with self.assertRaises(distcc.UsageError, msg=text) as cm:
                distcc.parse_hosts(text)
            self.assertIn(repr(text), str(cm.exception))

    def test_each_slot_pool_has_its_own_files(self):
        keys = [h.key() for h in distcc.parse_hosts(
            "localhost/2 @localhost @a/3 me@a @a:/opt/distcc.py")]
        keys += [distcc.Host(name, "localhost", limit=2).key()
                 for name in ("cpp", "local")]
        self.assertEqual(len(set(keys)), len(keys), keys)
        # A new limit keeps the host's relay and files.
        self.assertEqual(distcc.parse_hosts("@a/3")[0].key(),
                         distcc.parse_hosts("@a/9")[0].key())

    def test_backoff_probe_goes_to_one_job_and_comes_back(self):
        with tempfile.TemporaryDirectory() as d:
            config = distcc.Config({"DISTCC_DIR": d,
                                    "DISTCC_BACKOFF_PERIOD": "60"})
            (host,) = distcc.parse_hosts("@box")
            self.assertFalse(distcc.backed_off(config, host, []))
            distcc.mark_host_failed(config, host)
            self.assertTrue(distcc.backed_off(config, host, []))
            past = time.time() - 1          # the period is over
            os.utime(distcc.backoff_path(config, host), (past, past))
            first, second = [], []
            self.assertFalse(distcc.backed_off(config, host, first))
            self.assertEqual(first, [host])     # this job probes it
            self.assertTrue(distcc.backed_off(config, host, second))
            self.assertEqual(second, [])        # the others wait
            # The prober chose another host: the next job probes instead.
            distcc.release_probe(config, host)
            self.assertFalse(distcc.backed_off(config, host, second))
            self.assertEqual(second, [host])
            distcc.mark_host_good(config, host)
            self.assertEqual(os.listdir(d), [])

# ---------------------------------------------------------------------------
# Transport


class TestSshArgv(unittest.TestCase):

    def test_argv(self):
        host = distcc.parse_host("@me@box:/opt/my tools/distcc.py")
        argv = distcc.build_ssh_argv(["ssh", "-F", "cfg file"], host,
                                     "/home/u/.distcc")
        self.assertEqual(argv[:3], ["ssh", "-F", "cfg file"])
        self.assertEqual(argv[-3:], ["--", "box",
                                     "'/opt/my tools/distcc.py' -i"])
        joined = " ".join(argv)
        for option in ("BatchMode=yes", "ControlMaster=auto",
                       "ControlPath=/home/u/.distcc/cm-%C",
                       "ControlPersist=", "ServerAliveInterval=",
                       "Compression=no"):
            self.assertIn(option, joined)
        self.assertEqual(argv[argv.index("-l") + 1], "me")

    def test_no_control_master_where_its_socket_path_is_too_long(self):
        # ssh binds DIR/cm-<40 hex>.<16 random>: 61 bytes past DIR.
        fits = "/" + "d" * (distcc.SOCKET_PATH_LIMIT - 62)
        for directory, master in ((fits, "auto"), (fits + "d", "no")):
            argv = distcc.build_ssh_argv(["ssh"], distcc.parse_host("@box"),
                                         directory)
            self.assertIn("ControlMaster=" + master, argv)
            self.assertEqual("ControlPath=none" in argv, master == "no")

    def test_default_command(self):
        argv = distcc.build_ssh_argv(["ssh"], distcc.parse_host("@box"), "/d")
        self.assertEqual(argv[-1], "distcc.py -i")
        self.assertNotIn("-l", argv)

    def test_banner_after_noise(self):
        banner = (distcc.BANNER_FORMAT % (distcc.PROTOCOL, distcc.VERSION,
                                          12, "bwrap")).encode()
        f = io.BufferedReader(io.BytesIO(b"Welcome!\nmotd\n" + banner))
        self.assertEqual(distcc.find_banner(f), (distcc.VERSION, 12, "bwrap"))
        f = io.BufferedReader(io.BytesIO(b"DISTCC.PY %d 0.4.0 cpus=2\n"
                                         % distcc.PROTOCOL))
        self.assertEqual(distcc.find_banner(f), ("0.4.0", 2, "none"))

    def test_banner_errors(self):
        cases = [
            (b"", distcc.TransportError, "closed before"),
            (b"bash: distcc.py: command not found\n", distcc.TransportError,
             "command not found"),
            (b"DISTCC.PY 999 9.9\n", distcc.ProtocolError, "protocol"),
            (b"x" * (distcc.BANNER_NOISE_LIMIT + 10) + b"\n",
             distcc.ProtocolError, "no banner"),
        ]
        for data, cls, words in cases:
            with self.assertRaises(cls) as cm:
                distcc.find_banner(io.BufferedReader(io.BytesIO(data)))
            self.assertIn(words, str(cm.exception))

    def test_describe_exit(self):
        self.assertIn("ssh failed", distcc.describe_exit(255, "ssh"))
        self.assertIn("not found", distcc.describe_exit(127, "ssh"))
        self.assertIn("SIGKILL", distcc.describe_exit(-9, "ssh"))

# ---------------------------------------------------------------------------
# Server


class ServerProcess:
    """distcc.py -i as a child, spoken to directly."""

    def __init__(self, cpus=None, path=None, argv=None, env=None):
        """CPUS: the set of CPUs the server may run on (its affinity);
        PATH: a directory searched for compilers before $PATH; ARGV: how
        to reach a server (ssh, say) instead of starting one here."""
        env = dict(os.environ, **(env or {}))
        if path:
            env["PATH"] = path + os.pathsep + env["PATH"]
        self.proc = subprocess.Popen(
            argv or [sys.executable, DISTCC_PY, "-i"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            preexec_fn=cpus and (lambda: os.sched_setaffinity(0, cpus)))
        self.timer = threading.Timer(TIMEOUT, self.proc.kill)
        self.timer.start()
        self.version, self.cpus, self.sandbox = distcc.find_banner(
            self.proc.stdout)
        self.frames = None              # queue of frames read by a thread

    def send(self, kind, job_id, parts):
        distcc.write_frame(self.proc.stdin, kind, job_id, parts)

    def receive(self):
        return distcc.read_frame(self.proc.stdout)

    def answer_within(self, seconds):
        """The next frame other than PROGRESS, or None if none comes within
        SECONDS.  A thread reads the frames from then on: use this or
        next_frame(), or receive(), never both."""
        deadline = time.monotonic() + seconds
        while True:
            frame = self.next_frame(max(0.0, deadline - time.monotonic()))
            if frame is None or frame[0] != distcc.PROGRESS:
                return frame

    def next_frame(self, seconds):
        """The next frame, PROGRESS too, or None if none comes within
        SECONDS (see answer_within)."""
        import queue
        if self.frames is None:
            self.frames = queue.Queue()

            def read():
                frame = True
                while frame is not None:
                    frame = distcc.read_frame(self.proc.stdout)
                    self.frames.put(frame)
            threading.Thread(target=read, daemon=True).start()
        try:
            return self.frames.get(timeout=seconds)
        except queue.Empty:
            return None

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass  # already gone
        try:
            self.proc.wait(timeout=30)
        finally:
            self.timer.cancel()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            err = self.proc.stderr.read()
            self.proc.stderr.close()
        return err


def job_parts(source_text, compiler="gcc", args=("-O2",), source="t.c",
              cwd="/client/dir", lang=None, original=b""):
    """A JOB body."""
    meta = {"compiler": compiler, "family": distcc.compiler_family(compiler),
            "args": list(args), "mode": "-c", "lang": lang, "source": source,
            "cwd": cwd, "env": {}, "color": False}
    return distcc.pack_body(meta, [zlib.compress(source_text),
                                   zlib.compress(original)])


@unittest.skipUnless(HAVE_GCC, "gcc and g++ are not installed")
class TestServer(unittest.TestCase):

    def setUp(self):
        self.server = ServerProcess()

    def tearDown(self):
        self.server.close()

    def test_compiles_and_answers_in_order_of_completion(self):
        self.server.send(distcc.JOB, 5, job_parts(b"int f(void){return 1;}\n"))
        self.server.send(distcc.JOB, 6, job_parts(b"int g(void){return 2;}\n"))
        answers = {}
        for _ in range(2):
            kind, job_id, body = self.server.receive()
            self.assertEqual(kind, distcc.RESULT, bytes(body)[:200])
            meta, blobs = distcc.unpack_body(body)
            self.assertEqual(meta["status"], 0)
            answers[job_id] = zlib.decompress(blobs[2])
        self.assertEqual(sorted(answers), [5, 6])
        self.assertTrue(answers[5].startswith(b"\x7fELF"))

    @unittest.skipUnless(hasattr(os, "sched_setaffinity"),
                         "needs CPU affinity (Linux)")
    def test_jobs_beyond_its_cpus_wait_their_turn_in_order(self):
        # One CPU: job 1 holds it for 1.5 s (its gcc sleeps first); jobs 2
        # and 3 are told at once that they queue, then, each in its turn,
        # that it compiles, and they run in the order they came.
        bin_dir = tempfile.mkdtemp(prefix="distccpy-bin-")
        self.addCleanup(shutil.rmtree, bin_dir, True)
        with open(os.path.join(bin_dir, "gcc"), "w") as f:
            f.write('#!/bin/sh\ncase "$*" in *slow.c*) sleep 1.5;; esac\n'
                    'exec %s "$@"\n' % shutil.which("gcc"))
        os.chmod(os.path.join(bin_dir, "gcc"), 0o755)
        self.server.close()
        self.server = ServerProcess(cpus={min(os.sched_getaffinity(0))},
                                    path=bin_dir)
        self.assertEqual(self.server.cpus, 1)
        self.server.send(distcc.JOB, 1, job_parts(b"int f(void){return 1;}\n",
                                                  source="slow.c"))
        for job_id in (2, 3):
            self.server.send(distcc.JOB, job_id, job_parts(
                b"int g%d(void){return 2;}\n" % job_id))
        events = []                  # (job id, "queue"/"compile"/"result")
        deadline = time.monotonic() + TIMEOUT
        while sum(e[1] == "result" for e in events) < 3:
            frame = self.server.next_frame(deadline - time.monotonic())
            self.assertIsNotNone(frame, events)
            kind, job_id, body = frame
            if kind == distcc.PROGRESS:
                state = distcc.load_meta(bytes(body))["state"]
                if (job_id, state) not in events:
                    events.append((job_id, state))
            else:
                self.assertEqual(kind, distcc.RESULT, bytes(body)[:200])
                self.assertEqual(distcc.unpack_body(body)[0]["status"], 0)
                events.append((job_id, "result"))
        self.assertEqual(events[:2], [(2, "queue"), (3, "queue")])
        self.assertEqual([e for e in events if e[1] != "queue" and
                          e != (1, "compile")],   # job 1's beat, if any
                         [(1, "result"), (2, "compile"), (2, "result"),
                          (3, "compile"), (3, "result")])

    def test_a_huge_header_allocates_nothing_and_a_flood_is_bounded(self):
        self.server.close()
        bin_dir = tempfile.mkdtemp(prefix="distccpy-bin-")
        self.addCleanup(shutil.rmtree, bin_dir, True)
        with open(os.path.join(bin_dir, "gcc"), "w") as f:
            f.write('#!/bin/sh\ncase "$*" in *slow.c*) sleep 3;; esac\n'
                    'exec %s "$@"\n' % shutil.which("gcc"))
        os.chmod(os.path.join(bin_dir, "gcc"), 0o755)
        self.server = ServerProcess(cpus={min(os.sched_getaffinity(0))},
                                    path=bin_dir,
                                    env={"DISTCC_SANDBOX": "0"})
        # 300 jobs behind a slow one on one CPU: the 256th and later are
        # refused at once, the others queue.
        self.server.send(distcc.JOB, 1, job_parts(b"int s;\n",
                                                  source="slow.c"))
        for job_id in range(2, 301):
            self.server.send(distcc.JOB, job_id, job_parts(b"int f;\n"))
        refused = set()
        while len(refused) < 300 - distcc.MAX_SESSION_JOBS:
            frame = self.server.answer_within(TIMEOUT)
            self.assertIsNotNone(frame)
            self.assertEqual(frame[0], distcc.ERROR, bytes(frame[2])[:200])
            self.assertIn(b"already", bytes(frame[2]))
            refused.add(frame[1])
        self.assertEqual(refused, set(range(distcc.MAX_SESSION_JOBS + 1,
                                             301)))
        # A compiler query waits for a thread too, so it counts.
        self.server.send(distcc.QUERY, 400, distcc.pack_body(
            {"compiler": "gcc"}))
        frame = self.server.answer_within(TIMEOUT)
        self.assertEqual(frame[:2], (distcc.ERROR, 400))
        # A header that claims 200 MiB allocates nothing before its bytes.
        self.server.proc.stdin.write(HEADER.pack(
            distcc.MAGIC, distcc.JOB, 0, 999, 200 << 20) + b"x" * 10)
        self.server.proc.stdin.flush()
        time.sleep(0.5)
        with open("/proc/%d/status" % self.server.proc.pid) as f:
            rss = [int(line.split()[1]) for line in f
                   if line.startswith("VmHWM:")][0]
        self.assertLess(rss, 100 * 1024, "kB at most, with 200 MiB claimed")

    def test_a_cancelled_job_gets_no_answer(self):
        self.server.send(distcc.JOB, 1, job_parts(b"int f(void){return 1;}\n"))
        self.server.send(distcc.CANCEL, 1, [b""])
        self.server.send(distcc.JOB, 2, job_parts(b"int g(void){return 2;}\n"))
        self.server.proc.stdin.close()      # the server ends after its jobs
        frames = []
        frame = self.server.receive()
        while frame is not None:
            frames.append(frame[:2])
            frame = self.server.receive()
        self.assertEqual(frames, [(distcc.RESULT, 2)])

    def test_compile_error_is_a_result(self):
        self.server.send(distcc.JOB, 1, job_parts(
            b'# 1 "t.c"\nint f(void){return x;}\n',
            original=b"int f(void){return x;}\n"))
        kind, job_id, body = self.server.receive()
        self.assertEqual(kind, distcc.RESULT)
        meta, blobs = distcc.unpack_body(body)
        self.assertEqual(meta["status"], 1)
        self.assertIn(b"t.c:1:20: error", bytes(blobs[1]))
        self.assertIn(b"return x;", bytes(blobs[1]))
        self.assertEqual(meta["outputs"], [])

    def test_rejections_are_explicit(self):
        cases = [
            # job parts, words in the ERROR message
            (job_parts(b"", compiler="sh"), "not a compiler"),
            (job_parts(b"", compiler="/bin/gcc"), "not a compiler"),
            (job_parts(b"", args=["-fplugin=/tmp/x.so"]), "refused option"),
            (job_parts(b"", args=["-B/tmp"]), "refused option"),
            (job_parts(b"", args=["@/etc/passwd"]), "not an option"),
            (job_parts(b"", args=["-wrapper", "sh"]), "refused option"),
            (job_parts(b"", args=["-specs=/tmp/x"]), "refused option"),
            (job_parts(b"", args=["-fprofile-use=/tmp/p"]), "refused option"),
            (job_parts(b"", args=["-Wa,-adhln=/tmp/l"]), "refused option"),
            (job_parts(b"", args=["/etc/passwd"]), "not an option"),
            (job_parts(b"", args=["-o", "/tmp/x"]), "refused option"),
            (job_parts(b"", compiler="gcc-99"),
             "not installed"),
            (job_parts(b"", lang="assembler"), "language"),
            (job_parts(b"", cwd="relative"), "not absolute"),
            ([b"\x00\x00\x00\x02{}"], "sizes"),
            (distcc.pack_body({"compiler": "gcc"}, [b"x"]), "2 blobs"),
        ]
        for i, (parts, words) in enumerate(cases, 1):
            self.server.send(distcc.JOB, i, parts)
            kind, job_id, body = self.server.receive()
            self.assertEqual((kind, job_id), (distcc.ERROR, i), words)
            self.assertIn(words, bytes(body).decode(), words)

    def test_turns_go_in_the_order_of_the_tickets(self):
        turns = distcc.Turns(1)
        first, second, third = turns.ticket(), turns.ticket(), turns.ticket()
        self.assertTrue(first.acquire(blocking=False))
        self.assertFalse(second.acquire(blocking=False))
        self.assertFalse(third.acquire(blocking=False))
        turns.release(first)            # handed to the next in line
        self.assertFalse(third.acquire(blocking=False))
        self.assertTrue(second.acquire(blocking=False))
        turns.release(second)
        self.assertTrue(third.acquire(blocking=False))
        turns.release(third)
        self.assertEqual((turns.free, len(turns.waiting)), (1, 0))

    def test_paths_stay_in_the_job_dir(self):
        root = "/tmp/distccpy-x"
        for cwd, name in (("/a", "../../../etc/passwd"), ("/", "/etc/x"),
                          ("/a/b", "../../..//x")):
            path = distcc.confined_path(root, cwd, name)
            self.assertTrue(path.startswith(root + "/"), (cwd, name, path))
        # As spelled, the kernel walks the ".." of the directories made for
        # it, and never above the job dir; options and @files never pass.
        root = tempfile.mkdtemp(prefix="distccpy-test-")
        self.addCleanup(shutil.rmtree, root)
        for cwd, name, want in (
                ("/w/b", "../src/a.c", "/w/src/a.c"),
                ("/w", "dec/../common/c.h", "/w/common/c.h"),
                ("/w", "x/./y/../../z.h", "/w/z.h"),
                ("/w", "../../a.c", None), ("/", "../a.c", None),
                ("/w", "-o", None), ("/w", "@f", None), ("/w", "/a.c", None),
                ("/w", "a\0.c", None), ("/w", ["a.c"], None)):
            path = distcc.spelled_path(root, cwd, name)
            self.assertEqual(path, want and root + want, (cwd, name))
            if path:
                self.assertEqual(os.path.realpath(os.path.join(
                    root + cwd, name)), path)

    def test_absolute_names_move_into_the_job_dir_but_system_headers(self):
        root = tempfile.mkdtemp(prefix="distccpy-test-")
        self.addCleanup(shutil.rmtree, root)
        text = (b'# 0 "/w/a.c"\n# 1 "/usr/include/stdio.h" 1 3 4\nint x;\n'
                b'# 2 "/w/inc/h.h" 1\n# 1 "rel.h"\n'
                b'char *s = "\\n# 1 \\"/x\\"";\n')
        self.assertEqual(distcc.rebase_markers(text, root), text.replace(
            b'"/w/', b'"' + root.encode() + b'/w/'))
        os.makedirs(root + "/w/src")
        open(root + "/w/src/there.h", "w").close()
        err = ("%s/w/inc/h.h:2:3: warning: x\n/usr/include/x.h:1:1: note\n"
               "src/r.h:1:1: warning\nsrc/there.h:1:1: warning\n/etc/p:1:1:"
               " e\n%s/w/src/there.h:1:2: e\n" % (root, root)).encode()
        self.assertEqual(distcc.missing_sources(err, root + "/w", root),
                         ["/w/inc/h.h", "src/r.h"])

    def test_identity_query(self):
        self.server.send(distcc.QUERY, 3, distcc.pack_body({"compiler": "gcc"}))
        kind, job_id, body = self.server.receive()
        meta, _ = distcc.unpack_body(body)
        self.assertEqual((kind, job_id), (distcc.IDENTITY, 3))
        self.assertEqual(meta["identity"],
                         distcc.compiler_identity(shutil.which("gcc")))

    def test_garbage_gets_an_error_and_a_clean_exit(self):
        self.server.proc.stdin.write(b"this is not a frame at all\n")
        self.server.proc.stdin.flush()
        kind, job_id, body = self.server.receive()
        self.assertEqual(kind, distcc.ERROR)
        self.assertIn("magic", bytes(body).decode())
        err = self.server.close()
        self.assertEqual(self.server.proc.returncode, 0)
        self.assertNotIn(b"Traceback", err)
        self.server = ServerProcess()   # tearDown closes this one

    def test_fuzzed_input_never_crashes_the_server(self):
        import random
        rng = random.Random(7)
        rounds = int(os.environ.get("DISTCC_TEST_FUZZ_SERVERS", "25"))
        for i in range(rounds):
            data = fuzz_input(rng)
            r = run([sys.executable, DISTCC_PY, "-i"], input=data,
                    stdin=None, timeout=60)
            self.assertEqual(r.returncode, 0, (i, data[:80], r.stderr))
            self.assertNotIn(b"Traceback", r.stderr, (i, data[:80]))
            out = io.BufferedReader(io.BytesIO(r.stdout))
            distcc.find_banner(out)
            while distcc.read_frame(out) is not None:
                pass                      # every answer is a whole frame

    def test_temp_dirs_are_removed_and_dead_servers_swept(self):
        tmp = tempfile.mkdtemp(prefix="distccpy-tmp-")
        self.addCleanup(shutil.rmtree, tmp, True)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        # A killed server's job dir, another's, and one kept on purpose.
        for name in ("distccpy-%d-x" % dead.pid, "distccpy-%d-y" % os.getpid(),
                     "distccpy-keep-z"):
            os.mkdir(os.path.join(tmp, name))
        self.server.close()
        self.server = ServerProcess(env={"TMPDIR": tmp})
        # Where bwrap works, the server's own dir (its sandbox's /tmp).
        own = "distccpy-%d-sandbox-" % self.server.proc.pid

        def job_dirs():
            found = []
            for name in os.listdir(tmp):
                found += [os.path.join(name, n) for n in os.listdir(
                    os.path.join(tmp, name))] if name.startswith(own) \
                    else [name]
            return sorted(found)
        self.assertEqual(job_dirs(), ["distccpy-%d-y" % os.getpid(),
                                      "distccpy-keep-z"])
        self.server.send(distcc.JOB, 1, job_parts(b"int v;\n"))
        self.assertEqual(self.server.receive()[0], distcc.RESULT)
        # Removed just after the answer goes out, not before it.
        deadline = time.monotonic() + 5
        while len(job_dirs()) > 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(len(job_dirs()), 2)
        self.server.close()
        self.assertEqual(sorted(os.listdir(tmp)), [
            "distccpy-%d-y" % os.getpid(), "distccpy-keep-z"])
        self.server = ServerProcess()   # tearDown closes this one

class TestHostileClient(unittest.TestCase):
    """A client with a key restricted to `distcc.py -i` (a real sshd, the
    authorized_keys line an admin writes) that speaks the protocol by
    hand: whatever it sends, the server answers ERROR or keeps the effect
    inside the job's directory.  Every attack aims at files in a canary
    directory; afterwards nothing new is there and authorized_keys has
    not changed."""

    def setUp(self):
        if not HAVE_GCC:
            self.skipTest("gcc and g++ are not installed")
        self.sshd = require_sshd(self)
        self.canary = tempfile.mkdtemp(prefix="distccpy-canary-")
        self.addCleanup(shutil.rmtree, self.canary, True)
        self.keys = os.path.join(self.sshd.dir, "authorized_keys")
        with open(self.keys, "rb") as f:
            self.keys_before = f.read()
        self.server = ServerProcess(argv=[
            "ssh", "-F", self.sshd.config, "-o", "BatchMode=yes", "-T",
            "distcc-restricted", "anything the client asks for"])
        self.next_id = 1

    def tearDown(self):
        self.server.close()
        with open(self.keys, "rb") as f:
            self.assertEqual(f.read(), self.keys_before,
                             "authorized_keys changed")
        self.assertEqual(os.listdir(self.canary), [],
                         "a file appeared outside the job directory")

    def job(self, text=b"int f(void) { return 1; }\n", **meta):
        """Send a JOB with META over job_parts' defaults; return the
        answer's (kind, meta, blobs)."""
        extra = meta.pop("extra_blobs", [])
        base = {"compiler": "gcc", "family": "gcc", "args": ["-O2"],
                "mode": "-c", "lang": None, "source": "t.c",
                "cwd": "/client/dir", "env": {}, "color": False}
        base.update(meta)
        parts = distcc.pack_body(base, [zlib.compress(text),
                                        zlib.compress(text)] + extra)
        job_id, self.next_id = self.next_id, self.next_id + 1
        self.server.send(distcc.JOB, job_id, parts)
        frame = self.server.answer_within(TIMEOUT)
        self.assertIsNotNone(frame)
        kind, got_id, body = frame
        self.assertEqual(got_id, job_id)
        if kind == distcc.ERROR:
            return kind, distcc.load_meta(bytes(body)), []
        return (kind,) + distcc.unpack_body(body)

    def assertRefused(self, words, **meta):
        kind, answer, _ = self.job(**meta)
        self.assertEqual(kind, distcc.ERROR, (meta, answer))
        self.assertIn(words, answer["message"], meta)

    def test_options_that_run_programs_or_touch_files_are_refused(self):
        c = self.canary
        # Built by hand from gcc --help=common,optimizers,warnings,target,
        # c,c++ and clang --help-hidden: every option that takes a file, a
        # directory, a plugin or a program, in its long aliases and
        # abbreviations too, and the assembler's and linker's pass-through.
        attacks = [
            ["-wrapper", "sh,-c,touch %s/w" % c], ["-B" + c],
            ["--prefix=" + c], ["--prefix", c], ["-specs=%s/s" % c],
            ["--specs=%s/s" % c], ["-fplugin=%s/p.so" % c],
            ["-fplugin-arg-p-x=y"], ["-fpass-plugin=p.so"],
            ["-fmodule-mapper=|touch %s/m" % c, "-fmodule-header"],
            ["-fmodules-ts"], ["-fmodule-file=x"], ["--param", "@opts"],
            ["--param=max-inline-insns-single=@opts"], ["@opts"],
            ["-Wa,@opts"], ["-Wa,--M=%s/d" % c], ["-Wa,-adhln=%s/l" % c],
            ["--for-assembler=--M=%s/d" % c], ["-Xassembler", "-a"],
            ["-Wl,-o,%s/x" % c], ["-Xlinker", "x"], ["--for-linker=x"],
            ["-Wp,-MD,%s/d" % c], ["-Xpreprocessor", "-MD"],
            ["-Xclang", "-load"], ["-mllvm", "-stats"],
            ["-o", "%s/o" % c], ["-save-temps"], ["-save-temps=obj"],
            ["-fdump-tree-all"], ["-fdump-final-insns=%s/f" % c],
            ["-fcallgraph-info=su"], ["-fstack-usage"],
            ["-fprofile-generate=%s" % c], ["-fprofile-use=p"],
            ["-fprofile-dir=x"], ["-fauto-profile=p"],
            ["-fsave-optimization-record"], ["-fopt-info-all=%s/o" % c],
            ["-fopt-info=o.txt"], ["-ftime-trace"], ["-fpre-include=x.h"],
            ["-fself-test=x"], ["-fcompare-debug"],
            ["-fdiagnostics-format=sarif-file"],
            ["-fsanitize-ignorelist=x"], ["-fsanitize-blacklist=x"],
            ["-fxray-attr-list=x"], ["-fcrash-diagnostics-dir=x"],
            ["-fbasic-block-sections=list=x"], ["-frewrite-map-file=x"],
            ["-fbuild-session-file=x"], ["-gen-cdb-fragment-path", "x"],
            ["-module-dependency-dir", "x"], ["-I", c], ["-include", "x"],
            ["-iplugindir=" + c], ["-dumpdir", c + "/"], ["-dumpbase", "x"],
            ["-M"], ["-MD"], ["-E"], ["-S"], ["-c"], ["-x", "c"],
            ["-v"], ["-###"], [c], ["-O2\0-B/x"], ["-fsanitize=a b"],
        ]
        for args in attacks:
            self.assertRefused("refused option", args=args)
        # The control: options that only change code generation compile.
        kind, meta, _ = self.job(args=["-O2", "-g", "-Wall", "-fPIC",
                                       "-std=gnu11", "--param=max-inline-"
                                       "insns-single=100",
                                       "-ffile-prefix-map=/a=."])
        self.assertEqual((kind, meta["status"]), (distcc.RESULT, 0))

    def test_names_stay_in_the_job_dir(self):
        c = self.canary
        escape = "../" * 12 + c.lstrip("/") + "/escaped.o"
        for meta in ({"output": escape}, {"output": c + "/abs.o"},
                     {"output": "@opts"}, {"output": "-wrapper"},
                     {"source": escape[:-1] + "c", "output": "x.o"},
                     {"source": "@opts", "family": "clang",
                      "compiler": "clang", "lang": "c", "output": "y.o"},
                     {"cwd": "/a/../../" + c.lstrip("/"),
                      "output": "cwd.o"}):
            if meta.get("compiler") == "clang" and not shutil.which("clang"):
                continue
            kind, answer, blobs = self.job(**meta)
            if kind == distcc.RESULT:     # compiled, to a name of the host's
                self.assertEqual(answer["status"], 0, bytes(blobs[1]))
            else:
                self.assertIn("job directory", answer["message"], meta)
        # Extra files land inside the job dir whatever they are called.
        kind, answer, _ = self.job(extra=[escape[:-1] + "h"],
                                   extra_blobs=[zlib.compress(b"x")])
        self.assertIn(kind, (distcc.RESULT, distcc.ERROR))

    def test_the_sandbox_hides_the_accounts_files(self):
        if self.server.sandbox != "bwrap":
            self.skipTest("the host has no usable bwrap (apt-get install "
                          "bubblewrap): its compilers are not sandboxed")
        secret = os.path.join(os.path.expanduser("~"),
                              ".distccpy-secret-%d" % os.getpid())
        with open(secret, "w") as f:
            f.write("int secret = 0x5ec7e7;\n")
        self.addCleanup(os.unlink, secret)
        include = b'#include "%s"\n' % secret.encode()
        incbin = b'__asm__(".incbin \\"%s\\"");\n' % secret.encode()
        for text in (include, incbin):
            kind, meta, blobs = self.job(text=text)
            self.assertEqual(kind, distcc.RESULT)
            self.assertNotEqual(meta["status"], 0, text)
            self.assertRegex(bytes(blobs[1]), b"No such file|file not found")
        # The control: the same jobs without the sandbox read the file.
        plain = ServerProcess(env={"DISTCC_SANDBOX": "0"})
        try:
            self.assertEqual(plain.sandbox, "none")
            for text, leak in ((include, b"\xe7\xc7\x5e\x00"),
                               (incbin, b"int secret = 0x5ec7e7;")):
                plain.send(distcc.JOB, 1, job_parts(text, args=["-O0"]))
                kind, _, body = plain.receive()
                meta, blobs = distcc.unpack_body(body)
                self.assertEqual(meta["status"], 0, bytes(blobs[1]))
                self.assertIn(leak, zlib.decompress(blobs[2]))
        finally:
            plain.close()

    def test_locale_values_and_bombs_are_refused(self):
        for env in ({"LANGUAGE": "../../../tmp/x"}, {"LANG": "/etc"},
                    {"LC_ALL": "C\n"}, {"GCC_COLORS": "$(touch x)"},
                    {"PATH": "/tmp"}, {"LD_PRELOAD": "x.so"}):
            self.assertRefused("", env=env)
        self.assertRefused("extra files", extra=["h%d" % i for i in
                                                 range(40)],
                           extra_blobs=[zlib.compress(b"")] * 40)
        bomb = zlib.compress(bytes(64 << 20), 9)      # 64 MiB of zeros
        self.assertRefused("over", extra=["bomb.h"], extra_blobs=[bomb])
        # Extras that fill the allowance exactly leave no room for a bomb.
        full = zlib.compress(bytes(distcc.MAX_EXTRA_BYTES))
        self.assertRefused("over", extra=["full.h", "bomb.h"],
                           extra_blobs=[full, bomb])
        # Data of the wrong type gets an answer, not a dead thread.
        for meta in ({"lang": ["c"]}, {"lang": {"c": 1}}, {"args": "-O2"},
                     {"cwd": ["/"]}, {"source": 5}, {"mode": None}):
            kind, answer, _ = self.job(**meta)
            self.assertEqual(kind, distcc.ERROR, (meta, answer))
        # DISTCC_SAVE_TEMPS asked by the client alone keeps nothing.
        kind, answer, _ = self.job(save_temps=True)
        self.assertEqual(kind, distcc.RESULT)
        self.assertNotIn("temps", answer)


# ---------------------------------------------------------------------------
# Job state and statistics: the files --monitor and --stats read, without
# ssh.


class TestJobState(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="distccpy-state-")
        os.mkdir(os.path.join(self.dir, "jobs"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def record(self, **fields):
        rec = dict.fromkeys(distcc.STATS_FIELDS, 0)
        rec.update(time=1.0, host="localhost", outcome="local", reason="")
        rec.update(fields)
        return rec

    def test_state_line_follows_the_job_and_becomes_a_record(self):
        state = distcc.JobState(self.dir, "src/a.c")
        state.set_phase("preprocess")
        (job,) = distcc.read_job_states(self.dir)
        self.assertEqual((job["pid"], job["phase"], job["host"],
                          job["source"]),
                         (os.getpid(), "preprocess", "-", "src/a.c"))
        state.set_phase("send", "box")
        state.set_phase("compile", "box")
        (job,) = distcc.read_job_states(self.dir)
        self.assertEqual((job["phase"], job["host"]), ("compile", "box"))
        state.record.update(preprocessed=1000, sent=300, compile_ms=25)
        state.finish("remote", host="box")
        self.assertEqual(distcc.read_job_states(self.dir), [])
        self.assertEqual(os.listdir(os.path.join(self.dir, "jobs")), [])
        (rec,), end = distcc.read_stats(self.dir)
        self.assertEqual((rec["outcome"], rec["host"], rec["preprocessed"],
                          rec["sent"], rec["compile_ms"]),
                         ("remote", "box", 1000, 300, 25))
        self.assertEqual(end, os.path.getsize(os.path.join(self.dir,
                                                           "stats")))

    def test_lines_of_dead_wrappers_are_swept(self):
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        path = os.path.join(self.dir, "jobs", str(child.pid))
        with open(path, "w") as f:
            f.write("compile   \t1.0\tbox\tgone.c\n")
        self.assertEqual(distcc.read_job_states(self.dir), [])
        self.assertFalse(os.path.exists(path))

    def test_stats_rotate_and_read_from_an_offset(self):
        old_limit = distcc.STATS_LIMIT
        distcc.STATS_LIMIT = 300
        self.addCleanup(setattr, distcc, "STATS_LIMIT", old_limit)
        for i in range(10):
            distcc.JobState(self.dir, "f%d.c" % i).finish("local", "why")
        self.assertTrue(os.path.exists(os.path.join(self.dir, "stats.old")))
        records, end = distcc.read_stats(self.dir)
        self.assertEqual(len(records), 10)   # both files, nothing lost
        distcc.JobState(self.dir, "g.c").finish("remote", host="box")
        with open(os.path.join(self.dir, "stats"), "ab") as f:
            f.write(b"torn\tline\n")
        new, _ = distcc.read_stats(self.dir, end)
        self.assertEqual([r["outcome"] for r in new], ["remote"])

    def test_summary_counts_hosts_reasons_and_faults(self):
        records = [
            self.record(outcome="remote", host="a", preprocessed=100,
                        sent=40, objects=50, received=20, compile_ms=1500),
            self.record(outcome="remote", host="a"),
            self.record(outcome="remote", host="b"),
            self.record(reason="no -c or -S: this command links"),
            self.record(reason="no -c or -S: this command links"),
            self.record(reason="configure test programs are cheap"),
            self.record(outcome="fallback", reason="transport fault on b"),
        ]
        stats = distcc.summarize_stats(records)
        self.assertEqual((stats["jobs"], stats["remote"], stats["local"],
                          stats["fallback"], stats["failed"]),
                         (7, 3, 3, 1, 0))
        self.assertEqual(stats["hosts"]["a"], {"remote": 2})
        self.assertEqual(stats["local_reasons"],
                         {"no -c or -S": 2,
                          "configure test programs are cheap": 1})
        self.assertEqual(stats["bytes"], {"preprocessed": 100, "sent": 40,
                                          "objects": 50, "received": 20})
        self.assertEqual(stats["seconds"]["compile"], 1.5)
        self.assertEqual(
            distcc.format_summary(stats),
            "7 jobs: 3 remote (a 2, b 1), 3 local (2 no -c or -S, "
            "1 configure test programs are cheap), 1 fell back, 0 failed "
            "(1 transport fault on b)")
        self.assertEqual(distcc.format_summary(distcc.summarize_stats([])),
                         "0 jobs: 0 remote, 0 local")

    def test_monitor_screen(self):
        jobs = [{"pid": 11, "phase": "compile", "started": 90.0,
                 "host": "box", "source": "a.c"},
                {"pid": 12, "phase": "compile", "started": 95.0,
                 "host": "box", "source": "b.c"},
                {"pid": 13, "phase": "wait", "started": 99.0, "host": "-",
                 "source": "c.c"}]
        screen = distcc.format_monitor(jobs, [self.record()], 100.0)
        lines = screen.splitlines()
        self.assertIn("3 jobs in flight", lines[0])
        self.assertEqual(lines[1].split(), ["host"] + list(distcc.PHASES))
        self.assertEqual(lines[2].split(), ["(here)", "1", "0", "0", "0",
                                            "0", "0"])
        self.assertEqual(lines[3].split(), ["box", "0", "0", "0", "0", "2",
                                            "0"])
        self.assertEqual(lines[4].split(), ["11", "compile", "box", "10.0s",
                                            "a.c"])
        self.assertEqual(lines[-1], "finished since --monitor started: 1 "
                                    "job: 0 remote, 1 local (1 unknown)")
        for bad in (["0"], ["x"], ["1", "0"], ["1", "2", "3"], ["nan"],
                    ["inf"]):
            with self.assertRaises(distcc.UsageError):
                distcc.parse_monitor_args(bad)
        self.assertEqual(distcc.parse_monitor_args([]), (1.0, None))
        self.assertEqual(distcc.parse_monitor_args(["0.5", "3"]), (0.5, 3))


# ---------------------------------------------------------------------------
# Relay and wrapper, end to end over the real sshd


def hiding_command():
    """The command that runs a host's server where it cannot see the
    client's files: in a mount namespace of its own (a user namespace too
    where we are not root), in which an empty tmpfs covers each directory
    it is given.  None where this system cannot make one."""
    for argv in (["unshare", "-m"], ["unshare", "-rm"]):
        r = run(argv + ["sh", "-c", "mount -t tmpfs none /mnt"])
        if r.returncode == 0:
            return argv
    return None


HIDING = []                # [the command, or None], found on first use


class EndToEnd(unittest.TestCase):
    """Each test gets a work dir (the client's files), a DISTCC_DIR, the
    shared sshd and a host dir (its scripts and TMPDIR).  The host cannot
    see the client's files: its server runs where the work dir and the
    downloaded sources are empty (see host_script)."""

    def setUp(self):
        if not HAVE_GCC:
            self.skipTest("gcc and g++ are not installed")
        self.sshd = require_sshd(self)
        if not HIDING:
            HIDING.append(hiding_command())
        if HIDING[0] is None:
            if IN_CI:
                self.fail("cannot hide the client's files from the test "
                          "host: unshare -m fails")
            self.skipTest("unshare -m fails here: the test host would see "
                          "the client's files")
        self.work = tempfile.mkdtemp(prefix="distccpy-test-")
        self.host_dir = tempfile.mkdtemp(prefix="distccpy-host-")
        self.host_tmp = os.path.join(self.host_dir, "tmp")
        os.mkdir(self.host_tmp)
        self.distcc_dir = os.path.join(self.work, ".distcc")
        self.log = os.path.join(self.work, "distcc.log")
        self.default_host = self.host_script("host", "")
        self.env = env_without_distcc(
            DISTCC_DIR=self.distcc_dir,
            DISTCC_HOSTS=self.default_host,
            DISTCC_SSH=self.sshd.ssh_command(),
            DISTCC_FALLBACK="0",
            DISTCC_LOG=self.log,
            DISTCC_VERBOSE="1",
            # Python's warnings (a child still running, a file left open)
            # would reach the build's stderr: the tests compare it.
            PYTHONWARNINGS="default",
            LC_ALL="C")

    def tearDown(self):
        for pid in self.relay_pids():
            end_process(pid)
        self.stop_ssh_masters()
        reap_orphans()
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.host_dir, ignore_errors=True)

    def relay_pids(self):
        """The pids in the lockfiles of the relays."""
        pids = set()
        if os.path.isdir(self.distcc_dir):
            for name in os.listdir(self.distcc_dir):
                if name.startswith("relay-") and name.endswith(".lock"):
                    with open(os.path.join(self.distcc_dir, name)) as f:
                        words = f.read().split()
                    if words and words[0].isdigit():
                        pids.add(int(words[0]))
        return pids

    def stop_ssh_masters(self):
        if not os.path.isdir(self.distcc_dir):
            return
        path = 'ControlPath="%s/cm-%%C"' % self.distcc_dir    # blanks too
        for name in ("distcc-test", "distcc-dead", "distcc-restricted"):
            r = run(["ssh", "-F", self.sshd.config, "-o", path, "-O", "check",
                     name], timeout=10)
            m = re.search(rb"pid=(\d+)", r.stderr)
            if m:
                run(["ssh", "-F", self.sshd.config, "-o", path, "-O", "exit",
                     name], timeout=10)
                end_process(int(m.group(1)))

    def write(self, rel, text):
        path = os.path.join(self.work, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def distcc(self, argv, env=None, cwd=None):
        return run([sys.executable, DISTCC_PY] + argv, env=env or self.env,
                   cwd=cwd or self.work)

    def host_job_dirs(self, tmp=None):
        """The job dirs in the host's TMPDIR (TMP), also those inside the
        directory of a sandboxed server (itself not one)."""
        tmp = tmp or self.host_tmp
        found = []
        for name in sorted(os.listdir(tmp)):
            if "-sandbox-" in name:
                found += [os.path.join(name, n) for n in sorted(
                    os.listdir(os.path.join(tmp, name)))]
            else:
                found.append(name)
        return found

    def server_pids(self):
        """The pids of this test's servers (their TMPDIR is its own)."""
        found = []
        for pid in all_pids():
            try:
                with open("/proc/%d/environ" % pid, "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if cmdline(pid)[-2:] == [DISTCC_PY, "-i"] and \
                    os.fsencode("TMPDIR=" + self.host_tmp) in env:
                found.append(pid)
        return found

    def host_file(self, rel, text, mode=0o755):
        """Write TEXT to REL in the host's dir; return its path."""
        path = os.path.join(self.host_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def host_script(self, name, body, limit="", server=None):
        """A remote command in the host's dir: BODY (sh), then SERVER (by
        default distcc.py -i) with TMPDIR in the host's dir, in a mount
        namespace where the work dir and the downloaded sources are empty
        tmpfs.  Returns its DISTCC_HOSTS entry, with LIMIT (e.g. "/2")."""
        server = server or "%s %s -i" % (sys.executable, DISTCC_PY)
        hidden = [self.work] + [d for d in (CACHE_DIR,) if os.path.isdir(d)]
        script = self.host_file(name + ".sh", (
            "#!/bin/sh\nTMPDIR=%s; export TMPDIR\n%s\nexec %s sh -c "
            "'for d; do [ \"$d\" = -- ] && break; mount -t tmpfs -o size=1m "
            "none \"$d\" || exit 99; shift; done; shift; exec \"$@\"' sh %s "
            "-- %s\n") % (self.host_tmp, body, " ".join(HIDING[0]),
                         " ".join(hidden), server))
        return "@distcc-test%s:%s" % (limit, script)

    def host_with_gcc(self, name, body, limit="", version=None):
        """A host whose gcc is the sh script BODY; `gcc -v` (the identity
        check) runs VERSION, by default the real gcc.  Returns the host's
        DISTCC_HOSTS entry."""
        version = version or 'exec %s "$@"' % shutil.which("gcc")
        gcc = self.host_file(name + "-bin/gcc", "#!/bin/sh\ncase \" $* \" "
                             "in *\" -v \"*) %s;; esac\n%s\n" % (version, body))
        # These compilers write their logs into the host's dir: outside a
        # sandbox (the default host has one where bwrap works).
        return self.host_script(name, "PATH=%s:$PATH; DISTCC_SANDBOX=0; "
                                "export PATH DISTCC_SANDBOX"
                                % os.path.dirname(gcc), limit)

    def local(self, argv, cwd=None):
        return run(argv, cwd=cwd or self.work, env=self.env)

    def read(self, rel):
        with open(os.path.join(self.work, rel), "rb") as f:
            return f.read()

    def trace(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def assertSameArtifacts(self, argv, artifacts, cwd=None):
        """Compile ARGV locally and through distcc.py; compare ARTIFACTS
        (paths relative to the work dir) byte for byte, and the output."""
        local = self.local(argv, cwd=cwd)
        saved = {a: self.read(a) for a in artifacts}
        for a in artifacts:
            os.unlink(os.path.join(self.work, a))
        open(self.log, "w").close()    # this compile's trace only
        remote = self.distcc(argv, cwd=cwd)
        self.assertEqual(remote.returncode, local.returncode,
                         remote.stderr.decode(errors="replace"))
        self.assertEqual(remote.stderr, local.stderr)
        self.assertEqual(remote.stdout, local.stdout)
        for a in artifacts:
            self.assertEqual(self.read(a), saved[a],
                             "%s differs for %s" % (a, " ".join(argv)))
        self.assertIn("compiled on distcc-test", self.trace())


class TestRelay(EndToEnd):

    def test_one_handshake_for_many_compiles(self):
        for i in range(8):
            self.write("m/f%d.c" % i, "int f%d(int x) { return x * %d; }\n"
                       % (i, i))
        before = self.sshd.auth_count()
        for i in range(8):
            r = self.distcc(["gcc", "-O2", "-c", "m/f%d.c" % i, "-o",
                             "m/f%d.o" % i])
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.sshd.auth_count() - before, 1,
                         "8 compiles should cost one ssh authentication")
        self.assertEqual(self.trace().count("compiled on distcc-test"), 8)

    def test_the_relay_frees_the_build_directory_and_names_itself(self):
        # A build in b/ with ssh's -F given relative to it: nothing that
        # lives on (relay, ssh, its master) keeps b/ busy, ps says
        # "--relay" and the host, not the first job's command line, and
        # the relative -F still works.
        build = os.path.dirname(self.write("b/a.c", "int a;\n"))
        shutil.copy(self.sshd.config, os.path.join(build, "ssh.conf"))
        self.env["DISTCC_SSH"] = "ssh -F ssh.conf"
        self.env["DISTCC_LOG"] = os.path.relpath(self.log, build)
        r = self.distcc(["gcc", "-c", "a.c"], cwd=build)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("a.c compiled on distcc-test", self.trace())
        busy = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cwd = os.readlink("/proc/%s/cwd" % pid)
            except OSError:
                continue  # gone, or not ours to read
            if cwd == build or cwd.startswith(build + "/"):
                busy.append(pid)
        self.assertEqual(busy, [])
        (pid,) = self.relay_pids()
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            words = f.read().split(b"\0")
        self.assertIn(b"--relay", words)
        self.assertTrue(any(w.startswith(b"@distcc-test") for w in words))
        self.assertNotIn(b"a.c", words)
        r = self.distcc(["gcc", "-c", "a.c"], cwd=build)
        self.assertEqual(self.trace().count("a.c compiled on distcc-test"),
                         2, self.trace())

    def test_stop_ends_the_relay_and_its_master(self):
        self.write("src/a.c", "int a;\n")
        r = self.distcc(["gcc", "-c", "src/a.c", "-o", "a.o"])
        self.assertEqual(r.returncode, 0, r.stderr)
        (relay,) = self.relay_pids()
        r = self.distcc(["--stop"])
        self.assertEqual((r.returncode, r.stdout, r.stderr),
                         (0, b"stopped 1 relay\n", b""))
        deadline = time.monotonic() + 10
        while process_alive(relay) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(process_alive(relay))
        r = run(["ssh", "-F", self.sshd.config, "-o", "ControlPath=%s/cm-%%C"
                 % self.distcc_dir, "-O", "check", "distcc-test"], timeout=10)
        self.assertNotEqual(r.returncode, 0, "the ssh master is still up")

    def test_a_distcc_dir_with_blanks_keeps_its_control_master(self):
        # ssh splits ControlPath at blanks unless it is quoted.
        self.distcc_dir = os.path.join(self.work, "my state")
        self.env["DISTCC_DIR"] = self.distcc_dir
        self.write("src/a.c", "int a(int x) { return x + 1; }\n")
        r = self.distcc(["gcc", "-c", "src/a.c", "-o", "a.o"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("compiled on distcc-test", self.trace())
        self.assertNotIn("no ssh ControlMaster", self.trace())
        masters = [n for n in os.listdir(self.distcc_dir)
                   if n.startswith("cm-")]
        self.assertEqual(len(masters), 1, os.listdir(self.distcc_dir))

    def test_a_long_distcc_dir_does_without_a_control_master(self):
        # Room for the relay's socket, not for ssh's master socket.
        self.distcc_dir = os.path.join(self.work, "long-distcc-dir-")
        self.distcc_dir += "x" * (distcc.SOCKET_PATH_LIMIT - 45 -
                                  len(self.distcc_dir))
        self.env["DISTCC_DIR"] = self.distcc_dir
        self.write("src/a.c", "int a(int x) { return x + 1; }\n")
        for _ in range(2):
            r = self.distcc(["gcc", "-c", "src/a.c", "-o", "a.o"])
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.trace().count("compiled on distcc-test"), 2,
                         self.trace())
        self.assertIn("no ssh ControlMaster: %s is too long"
                      % self.distcc_dir, self.trace())
        remote = self.read("a.o")
        self.local(["gcc", "-c", "src/a.c", "-o", "a.o"])
        self.assertEqual(self.read("a.o"), remote)

    def test_racing_cold_wrappers_start_one_relay(self):
        n = 12
        for i in range(n):
            self.write("r/f%d.c" % i, "int g%d(void) { return %d; }\n" % (i, i))
        before = self.sshd.auth_count()
        procs = [subprocess.Popen(
            [sys.executable, DISTCC_PY, "gcc", "-c", "r/f%d.c" % i, "-o",
             "r/f%d.o" % i], cwd=self.work, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(n)]
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            self.assertEqual(p.returncode, 0, err)
        relays = set(re.findall(r"distcc.py\[(\d+)\] relay: relay for",
                                self.trace()))
        self.assertEqual(len(relays), 1, self.trace())
        self.assertEqual(self.sshd.auth_count() - before, 1)
        self.assertEqual(len(self.relay_pids()), 1)

    def test_jobs_run_concurrently(self):
        # Each compile sleeps on the host inside a #pragma-free slow path:
        # a large constant-folded array makes gcc busy for a while.
        slow = "static const int t[] = {%s};\nint get(int i){return t[i];}\n" \
            % ",".join(str(i * 7 % 13) for i in range(60000))
        for i in range(4):
            self.write("c/s%d.c" % i, slow.replace("get", "get%d" % i))
        self.distcc(["gcc", "-c", "c/s0.c", "-o", "c/s0.o"])   # warm up
        procs = [subprocess.Popen(
            [sys.executable, DISTCC_PY, "gcc", "-c", "c/s%d.c" % i, "-o",
             "c/s%d.o" % i], cwd=self.work, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
        for p in procs:
            p.communicate(timeout=TIMEOUT)
            self.assertEqual(p.returncode, 0)
        # The server logs nothing; the relay's trace shows overlapping jobs
        # when each 'send' is followed by another 'send' before 'compiled'.
        events = re.findall(r"(send c/s\d|c/s\d\.c compiled)", self.trace())
        depth = peak = 0
        for e in events[2:]:                       # skip the warm-up job
            depth += 1 if e.startswith("send") else -1
            peak = max(peak, depth)
        self.assertGreater(peak, 1, "jobs never overlapped: %s" % events)

    def test_relay_exits_when_idle_and_removes_its_socket(self):
        self.write("i.c", "int i;\n")
        env = dict(self.env, DISTCC_RELAY_TIMEOUT="1")
        r = self.distcc(["gcc", "-c", "i.c"], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        pids = self.relay_pids()
        self.assertEqual(len(pids), 1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(map(process_alive, pids)):
            time.sleep(0.1)
        self.assertFalse(any(map(process_alive, pids)))
        socks = [n for n in os.listdir(self.distcc_dir) if n.endswith(".sock")]
        self.assertEqual(socks, [])
        # The next wrapper starts a new relay, through the kept master.
        before = self.sshd.auth_count()
        r = self.distcc(["gcc", "-c", "i.c"], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.sshd.auth_count(), before)

    def test_ssh_killed_falls_back_and_next_job_reconnects(self):
        slow = "static const int t[] = {%s};\nint get(int i){return t[i];}\n" \
            % ",".join(str(i * 7 % 13) for i in range(200000))
        self.write("k/slow.c", slow)
        self.write("k/fast.c", "int fast(void) { return 3; }\n")
        r = self.distcc(["gcc", "-c", "k/fast.c", "-o", "k/fast.o"])
        self.assertEqual(r.returncode, 0, r.stderr)
        (relay,) = self.relay_pids()
        ssh = child_pids(relay)
        self.assertEqual(len(ssh), 1, "the relay runs one ssh")
        # Kill ssh while a job is in flight: that job compiles locally.
        self.env["DISTCC_BACKOFF_PERIOD"] = "0.1"
        env = dict(self.env, DISTCC_FALLBACK="1")
        p = subprocess.Popen(
            [sys.executable, DISTCC_PY, "gcc", "-c", "k/slow.c", "-o",
             "k/slow.o"], cwd=self.work, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while "send k/slow.c" not in self.trace():
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        os.kill(ssh[0], signal.SIGKILL)
        out, err = p.communicate(timeout=TIMEOUT)
        self.assertEqual(p.returncode, 0, err)
        self.assertIn(b"compiling k/slow.c locally", err)
        want = self.local(["gcc", "-c", "k/slow.c", "-o", "k/want.o"])
        self.assertEqual(want.returncode, 0)
        self.assertEqual(self.read("k/slow.o"), self.read("k/want.o"))
        # The next job starts a new session (through the kept master).
        r = self.distcc(["gcc", "-c", "k/fast.c", "-o", "k/fast.o"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.trace().count("connected to distcc-test"), 2)
        self.assertEqual(self.relay_pids(), {relay})

    def test_stalled_host_times_out_and_job_compiles_locally(self):
        slow = "static const int t[] = {%s};\nint get(int i){return t[i];}\n" \
            % ",".join(str(i * 7 % 13) for i in range(150000))
        self.write("st/slow.c", slow)
        # One process to stop: the server itself, not a sandbox around it.
        self.env.update(DISTCC_IO_TIMEOUT="2", DISTCC_FALLBACK="1",
                        DISTCC_HOSTS=self.host_script(
                            "plain", "DISTCC_SANDBOX=0; export DISTCC_SANDBOX"))
        r = self.distcc(["gcc", "-c", "st/slow.c", "-o", "st/warm.o"])
        self.assertEqual(r.returncode, 0, r.stderr)
        servers = self.server_pids()
        self.assertEqual(len(servers), 1, "one server process")
        p = subprocess.Popen(
            [sys.executable, DISTCC_PY, "gcc", "-c", "st/slow.c", "-o",
             "st/slow.o"], cwd=self.work, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.kill(servers[0], signal.SIGSTOP)
        try:
            started = time.monotonic()
            out, err = p.communicate(timeout=60)
            waited = time.monotonic() - started
        finally:
            os.kill(servers[0], signal.SIGCONT)
        self.assertEqual(p.returncode, 0, err)
        self.assertIn(b"no word from the host for 2s", err)
        self.assertLess(waited, 30)
        self.assertEqual(self.read("st/slow.o"), self.read("st/warm.o"))

    def test_a_compiler_that_uses_no_cpu_is_dropped_and_compiled_here(self):
        # The host's gcc blocks forever, using no CPU: its heartbeat says
        # so, and after DISTCC_IO_TIMEOUT the job compiles here; the
        # host's compiler is killed.
        pidfile = os.path.join(self.host_dir, "stuck.pid")
        host = self.host_with_gcc("stuck", "echo $$ > %s; exec sleep 600"
                                  % pidfile)
        self.write("st/a.c", C_SOURCE)
        self.write("st/local.h", LOCAL_H)
        env = dict(self.env, DISTCC_HOSTS=host, DISTCC_IO_TIMEOUT="3",
                   DISTCC_FALLBACK="1")
        argv = ["gcc", "-O2", "-c", "st/a.c", "-o", "st/a.o"]
        started = time.monotonic()
        r = self.distcc(argv, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertLess(time.monotonic() - started, 30)
        self.assertIn(b"has used no CPU for 3 s", r.stderr)
        remote = self.read("st/a.o")
        self.local(argv)
        self.assertEqual(self.read("st/a.o"), remote)
        with open(pidfile) as f:
            stuck = int(f.read())
        deadline = time.monotonic() + 10
        while process_alive(stuck) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(process_alive(stuck), "the host's gcc still runs")

    def test_a_compiler_busy_longer_than_the_timeout_is_not_dropped(self):
        # The control for the test above: a compiler that works (burns CPU
        # in a loop of date calls) for longer than DISTCC_IO_TIMEOUT.
        host = self.host_with_gcc(
            "busy", 'end=$(($(date +%%s) + 5)); while [ $(date +%%s) -lt $end ]'
            '; do :; done; exec %s "$@"' % shutil.which("gcc"))
        self.write("st/b.c", "int b(void) { return 2; }\n")
        env = dict(self.env, DISTCC_HOSTS=host, DISTCC_IO_TIMEOUT="3")
        r = self.distcc(["gcc", "-c", "st/b.c", "-o", "st/b.o"], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("compiled on distcc-test", self.trace())

    def test_the_host_cannot_read_the_clients_files(self):
        # The honesty of every end-to-end test: whatever the route forgets
        # to send, the host cannot find on its own.
        seen = os.path.join(self.host_dir, "seen")
        secret = self.write("hid/secret.h", "#define SECRET 42\n")
        host = self.host_with_gcc("peek", "cat %s > %s 2>&1\nexec %s \"$@\""
                                  % (secret, seen, shutil.which("gcc")))
        self.write("hid/a.c", '#include "secret.h"\nint a = SECRET;\n')
        r = self.distcc(["gcc", "-c", "hid/a.c", "-o", "hid/a.o"],
                        env=dict(self.env, DISTCC_HOSTS=host))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("compiled on distcc-test", self.trace())
        with open(seen, "rb") as f:
            self.assertIn(b"No such file", f.read())

    def test_a_job_after_a_pause_compiles_remotely(self):
        # A pause twice DISTCC_IO_TIMEOUT long between two jobs of one
        # session: the silence before the second job is not the host's.
        host = self.host_with_gcc("pause", 'sleep 2.5; exec %s "$@"'
                                  % shutil.which("gcc"))
        self.write("pa/a.c", "int a(void) { return 1; }\n")
        env = dict(self.env, DISTCC_HOSTS=host, DISTCC_IO_TIMEOUT="3")
        for i in range(2):
            if i:
                time.sleep(6.5)
            r = self.distcc(["gcc", "-c", "pa/a.c", "-o", "pa/a%d.o" % i],
                            env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
        trace = self.trace()
        self.assertEqual(trace.count("compiled on distcc-test"), 2, trace)
        self.assertEqual(trace.count("connected to distcc-test"), 1, trace)
        self.assertNotIn("fault", trace)

    def test_host_that_never_answers_a_query_is_left(self):
        host = self.host_with_gcc(
            "q", 'exec %s "$@"' % shutil.which("gcc"), version="sleep 3")
        self.write("q/a.c", "int a;\n")
        env = dict(self.env, DISTCC_HOSTS=host, DISTCC_CONNECT_TIMEOUT="2",
                   DISTCC_FALLBACK="1")
        started = time.monotonic()
        r = self.distcc(["gcc", "-c", "q/a.c", "-o", "q/a.o"], env=env)
        waited = time.monotonic() - started
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"no answer to a QUERY in 2 s", r.stderr)
        self.assertLess(waited, 15)
        self.assertTrue(os.path.exists(os.path.join(self.work, "q/a.o")))
        time.sleep(max(0, 3.5 - waited))  # the host's stuck gcc -v ends

    def test_stopped_relay_times_out_and_job_compiles_locally(self):
        self.write("sr/a.c", "int a(void) { return 1; }\n")
        self.env.update(DISTCC_IO_TIMEOUT="1", DISTCC_CONNECT_TIMEOUT="5",
                        DISTCC_FALLBACK="1")
        r = self.distcc(["gcc", "-c", "sr/a.c", "-o", "sr/warm.o"])
        self.assertEqual(r.returncode, 0, r.stderr)
        (relay,) = self.relay_pids()
        os.kill(relay, signal.SIGSTOP)
        try:
            started = time.monotonic()
            r = self.distcc(["gcc", "-c", "sr/a.c", "-o", "sr/a.o"])
            waited = time.monotonic() - started
        finally:
            os.kill(relay, signal.SIGCONT)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"the relay said nothing for 6 s", r.stderr)
        self.assertLess(waited, 20)
        self.assertEqual(self.read("sr/a.o"), self.read("sr/warm.o"))

    def test_state_dir_is_private(self):
        self.write("p.c", "int p;\n")
        r = self.distcc(["gcc", "-c", "p.c"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.stat(self.distcc_dir).st_mode & 0o777, 0o700)
        socks = [n for n in os.listdir(self.distcc_dir) if n.endswith(".sock")]
        self.assertEqual(len(socks), 1)
        mode = os.stat(os.path.join(self.distcc_dir, socks[0])).st_mode
        self.assertEqual(mode & 0o777, 0o600)

    def test_state_dir_of_another_user_is_refused(self):
        if os.getuid() != 0:
            self.skipTest("chown to another user needs root")
        self.write("p.c", "int p;\n")
        os.makedirs(self.distcc_dir, mode=0o700)
        os.chown(self.distcc_dir, 65534, 65534)
        r = self.distcc(["gcc", "-c", "p.c"])
        self.assertEqual(r.returncode, distcc.EXIT_BAD_ARGUMENTS)
        self.assertRegex(r.stderr.decode(), r"^distcc.py: usage: .* belongs "
                         r"to uid 65534, not to you; set DISTCC_DIR .*\n$")

    def test_insecure_state_dir_is_refused(self):
        self.write("p.c", "int p;\n")
        os.makedirs(self.distcc_dir)
        os.chmod(self.distcc_dir, 0o777)
        r = self.distcc(["gcc", "-c", "p.c"])
        self.assertNotEqual(r.returncode, 0)
        self.assertRegex(r.stderr.decode(), r"^distcc.py: usage: .* writable "
                         r"by others .*; run chmod 700 .*\n$")


class TestWrapper(EndToEnd):

    def setUp(self):
        EndToEnd.setUp(self)
        self.write("src/local.h", LOCAL_H)
        self.write("src/a.c", C_SOURCE)
        self.write("src/b.cc", CXX_SOURCE)
        self.write("src/c.cc", CXX_LIGHT_SOURCE)
        os.makedirs(os.path.join(self.work, "obj"))

    def test_wrapper_imports_only_what_a_job_needs(self):
        """Each import of json, re, socket, subprocess... costs every
        compile 5-10 ms; a remote job through the launcher, its relay
        running, needs none of them."""
        python = self.write("py.sh", "#!/bin/sh\nexec %s -X importtime "
                            "\"$@\"\n" % sys.executable)
        os.chmod(python, 0o755)
        env = dict(self.env, DISTCC_PYTHON=python)
        first = run([DISTCC_PY, "gcc", "-O2", "-c", "src/a.c", "-o",
                     "obj/first.o"], env=env, cwd=self.work)
        self.assertEqual(first.returncode, 0, first.stderr)
        second = run([DISTCC_PY, "gcc", "-O2", "-c", "src/a.c", "-o",
                      "obj/second.o"], env=env, cwd=self.work)
        self.assertEqual(second.returncode, 0, second.stderr)
        self.assertEqual(self.trace().count("compiled on distcc-test"), 2)
        imported = set(re.findall(r"(?m)^import time: +\d+ \| +\d+ \| +"
                                  r"(\S+)$", second.stderr.decode()))
        self.assertIn("zlib", imported)          # the measurement works
        heavy = {"json", "re", "enum", "socket", "subprocess", "shlex",
                 "hashlib", "random", "threading", "tempfile", "shutil"}
        self.assertEqual(imported & heavy, set())
        # The first job imported some of them (it forked the relay).
        self.assertTrue(heavy & set(re.findall(
            r"(?m)^import time: +\d+ \| +\d+ \| +(\S+)$",
            first.stderr.decode())))

    def test_outputs_that_are_not_new_regular_files_are_gccs(self):
        self.write("src/same.c", "int s;\n")
        argv = ["gcc", "-c", "src/same.c", "-o", "src/same.c"]
        r, local = self.distcc(argv), self.local(argv)
        self.assertEqual((r.returncode, r.stderr),
                         (local.returncode, local.stderr))
        self.assertIn(b"same as output", r.stderr)
        self.assertEqual(self.read("src/same.c"), b"int s;\n")
        if os.getuid() != 0:
            return                   # mknod of a device needs root
        null = os.path.join(self.work, "null")
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        r = self.distcc(["gcc", "-c", "src/same.c", "-o", "null"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(stat.S_ISCHR(os.stat(null).st_mode),
                        "the device node was replaced")
        self.assertIn("is not a regular file", self.trace())

    def test_warnings_inside_macros_match_local(self):
        # gcc -E -fdirectives-only prints each #define in its own spelling
        # (spaces gone, lines joined, comments dropped): the definitions
        # the host sees must be the file's, column for column.
        self.write("src/mac.h", "#define HALF(a,   b)   ((a)   /   (b)) "
                   "  /* spaced */\n")
        self.write("src/mac.c", '#include "mac.h"\n#define TWICE(x) \\\n'
                   '    ((x) +       \\\n     (x))\nint f(void) { return '
                   'HALF(1, 0) + TWICE(1 / 0); }\n')
        argv = ["gcc", "-Wall", "-g", "-O1", "-c", "src/mac.c", "-o",
                "obj/mac.o"]
        self.assertSameArtifacts(argv, ["obj/mac.o"])
        self.assertIn(b"mac.h:1:31: warning: division by zero",
                      self.local(argv).stderr)

    def test_the_host_compiles_the_text_as_the_main_file(self):
        # The host must know which file is the main one, and still quote
        # the source's lines (a warning, then the same as an error).
        self.write("src/anon.h", ANON_HEADER)
        self.write("src/sub.cc", SUBOBJECT_SOURCE)
        for extra in ([], ["-Werror"]):
            argv = ["g++", "-Wall", "-Wconversion", "-g", "-O1"] + extra + [
                "-c", "src/sub.cc", "-o", "obj/sub.o"]
            self.assertSameArtifacts(argv, [] if extra else ["obj/sub.o"])
        local = self.local(argv[:5] + ["-c", "src/sub.cc", "-o", "obj/sub.o"])
        self.assertIn(b"return h->a.x", local.stderr)
        self.assertNotIn(b"subobject", local.stderr)

    def test_a_format_warning_keeps_its_notes(self):
        # gcc drops "format string is defined here" for any input with
        # line markers; such a job is compiled here instead.
        self.write("src/fmt.c", '#include <stdio.h>\n#define LOG(fmt, v) '
                   'printf(fmt, v)\nint f(int x) { return LOG("%s\\n", x);'
                   ' }\n')
        argv = ["gcc", "-Wall", "-O2", "-c", "src/fmt.c", "-o", "obj/f.o"]
        local = self.local(argv)
        self.assertIn(b"format string is defined here", local.stderr)
        r = self.distcc(argv)
        self.assertEqual((r.returncode, r.stderr),
                         (local.returncode, local.stderr))
        self.assertIn("-Wformat warning", self.trace())

    def test_pedantic_never_hangs_and_matches_local(self):
        self.write("src/p.c", "int empty[0];\nint f(void) { return 0; }\n")
        for flag in ("-pedantic", "-Wpedantic", "-pedantic-errors"):
            argv = ["gcc", flag, "-O2", "-c", "src/p.c", "-o", "obj/p.o"]
            local = self.local(argv)
            saved = self.read("obj/p.o") if local.returncode == 0 else None
            started = time.monotonic()
            r = run([sys.executable, DISTCC_PY] + argv, env=self.env,
                    cwd=self.work, timeout=60)
            self.assertLess(time.monotonic() - started, 60)
            self.assertEqual((r.returncode, r.stderr),
                             (local.returncode, local.stderr), flag)
            self.assertIn(b"empty", r.stderr)       # the pedantic complaint
            if saved is not None:
                self.assertEqual(self.read("obj/p.o"), saved, flag)

    def test_c_and_cxx_objects_are_identical(self):
        matrix = [
            ["gcc", "-O2", "-c", "src/a.c", "-o", "obj/a.o"],
            ["gcc", "-O2", "-g", "-c", "src/a.c", "-o", "obj/a.o"],
            ["gcc", "-O0", "-g", "-Wall", "-DEXTRA=1", "-c", "src/a.c", "-o",
             "obj/a.o"],
            ["g++", "-O2", "-c", "src/c.cc", "-o", "obj/c.o"],
            ["g++", "-O1", "-g", "-std=c++17", "-c", "src/b.cc", "-o",
             "obj/b.o"],
            ["gcc", "-O2", "-g", "-c", os.path.join(self.work, "src/a.c"),
             "-o", os.path.join(self.work, "obj/a.o")],
        ]
        for argv in matrix:
            with self.subTest(argv=" ".join(argv)):
                self.assertSameArtifacts(argv, ["obj/" + os.path.basename(
                    argv[-1])])

    def test_fidelity_matrix(self):
        """Every artifact of every flag set, byte for byte, C and C++, gcc
        and (when installed) clang; each remote unless the scanner says
        why not."""
        flag_sets = [
            ["-O2", "-g"],
            ["-O0", "-g", "-Wall"],
            ["-O2", "-g", "-gdwarf-4"],
            ["-O2", "-MD"],
            ["-O2", "-MMD", "-MF", "obj/dep.d"],
            ["-O1", "-MD", "-MT", "custom-target", "-MP"],
            ["-O2", "-Wp,-MD,obj/wp.d"],
            ["-O2", "-Wp,-MMD,obj/wpm.d"],
            # C++ at -O2 gets a random DWO id even locally; -O0 is stable.
            ["-O0", "-g", "-gsplit-dwarf"],
            ["-O2", "-DNAME=value", "-Isrc", "-include", "src/local.h"],
            # dpkg-buildflags' CFLAGS (the map names the source tree),
            # and a debug map of the work dir as another build writes it.
            ["-g", "-O2", "-ffile-prefix-map=%s=." % self.work,
             "-fstack-protector-strong", "-Wformat",
             "-Werror=format-security"],
            ["-O1", "-g", "-fdebug-prefix-map=%s=/build" % self.work],
        ]
        compilers = [("gcc", "src/a.c"), ("g++", "src/c.cc")]
        if shutil.which("clang") and shutil.which("clang++"):
            compilers += [("clang", "src/a.c"), ("clang++", "src/c.cc")]
        for cc, src in compilers:
            for flags in flag_sets:
                argv = [cc] + flags + ["-c", src, "-o", "obj/out.o"]
                job = None
                try:
                    job = distcc.scan_args(argv)
                except distcc.LocalOnly as e:
                    reason = str(e)
                artifacts = ["obj/out.o"]
                for f in flags:
                    if f.startswith(("-Wp,-MD,", "-Wp,-MMD,")):
                        artifacts.append(f.split(",")[2])
                if "-MF" in flags:
                    artifacts.append(flags[flags.index("-MF") + 1])
                elif "-MD" in flags or "-MMD" in flags:
                    artifacts.append("obj/out.d")
                if "-gsplit-dwarf" in flags:
                    artifacts.append("obj/out.dwo")
                with self.subTest(argv=" ".join(argv)):
                    open(self.log, "w").close()
                    if job is None:
                        r = self.distcc(argv)
                        self.assertEqual(r.returncode, 0, r.stderr)
                        self.assertIn("local: " + reason, self.trace())
                        continue
                    self.assertSameArtifacts(argv, artifacts)

    def test_depfile_and_default_output_are_identical(self):
        self.assertSameArtifacts(
            ["gcc", "-O2", "-MD", "-c", "src/a.c", "-o", "obj/a.o"],
            ["obj/a.o", "obj/a.d"])
        self.assertSameArtifacts(
            ["gcc", "-MMD", "-MP", "-c", "src/a.c"], ["a.o", "a.d"])

    def test_dependencies_output_from_the_environment(self):
        # gcc writes these from the preprocessor, which runs here.
        for value, depfile in (("obj/env.d", "obj/env.d"),
                               ("obj/env2.d custom-target", "obj/env2.d")):
            self.env["DEPENDENCIES_OUTPUT"] = value
            self.assertSameArtifacts(
                ["gcc", "-O2", "-c", "src/a.c", "-o", "obj/a.o"],
                ["obj/a.o", depfile])
            self.assertIn(b"local.h", self.read(depfile))

    def test_source_compiled_from_its_parent_and_S(self):
        self.assertSameArtifacts(
            ["gcc", "-O2", "-g", "-c", "a.c", "-o", "../obj/a.o"],
            ["obj/a.o"], cwd=os.path.join(self.work, "src"))
        self.assertSameArtifacts(["gcc", "-O2", "-S", "src/a.c"], ["a.s"])

    def test_compile_error_matches_local(self):
        self.write("src/e.c", ERROR_SOURCE)
        argv = ["gcc", "-Wall", "-c", "src/e.c", "-o", "obj/e.o"]
        local = self.local(argv)
        remote = self.distcc(argv)
        self.assertEqual(local.returncode, 1)
        self.assertEqual(remote.returncode, local.returncode)
        self.assertEqual(remote.stderr.decode(), local.stderr.decode())
        self.assertFalse(os.path.exists(os.path.join(self.work, "obj/e.o")))
        self.assertIn("compiled on distcc-test", self.trace())
        self.assertNotIn("locally", self.trace())

    def test_warnings_match_local(self):
        self.write("src/w.c", WARNING_SOURCE)
        self.assertSameArtifacts(
            ["gcc", "-Wall", "-c", "src/w.c", "-o", "obj/w.o"], ["obj/w.o"])

    def test_diagnostics_in_project_headers_match_local(self):
        self.write("src/inc/warn.h", SIGN_HEADER)
        self.write("src/h.c", '#include "inc/warn.h"\nint h(void) '
                   '{ return sign(1u, 2); }\n')
        self.assertSameArtifacts(
            ["gcc", "-Wall", "-Wextra", "-O2", "-c", "src/h.c", "-o",
             "obj/h.o"], ["obj/h.o"])
        self.assertIn("resend src/h.c with 1 headers", self.trace())

    def test_absolute_paths_keep_their_diagnostics(self):
        # CMake names every source and include dir by its absolute path:
        # the host must still quote those files' lines, and know the main
        # file (-Wsubobject-linkage) although its name is absolute.
        src = os.path.join(self.work, "src")
        self.write("src/inc/warn.h", SIGN_HEADER)
        self.write("src/abs.c", '#include "warn.h"\nint h(void) '
                   '{ int unused; return sign(1u, 2); }\n')
        argv = ["gcc", "-Wall", "-Wextra", "-g", "-O2", "-I" + src + "/inc",
                "-c", src + "/abs.c", "-o", "obj/abs.o"]
        self.assertSameArtifacts(argv, ["obj/abs.o"])
        local = self.local(argv).stderr
        self.assertIn(b"unused;", local)        # quoted: main file
        self.assertIn(b"return u < i;", local)  # quoted: the header
        self.write("src/anon.h", ANON_HEADER)
        self.write("src/sub.cc", SUBOBJECT_SOURCE)
        for extra in ([], ["-Werror"]):
            argv = ["g++", "-Wall", "-Wconversion", "-g", "-O1"] + extra + [
                "-c", src + "/sub.cc", "-o", self.work + "/obj/sub.o"]
            self.assertSameArtifacts(argv, [] if extra else ["obj/sub.o"])

    def test_names_through_dotdot_keep_their_diagnostics(self):
        # Meson compiles ../src/x.c from its build dir; Brotli's headers
        # include "../common/constants.h".  gcc names such files as spelled.
        self.write("src/inc/warn.h", SIGN_HEADER)
        self.write("src/dec/use.h", '#include "../inc/warn.h"\n')
        self.write("src/anon.h", ANON_HEADER)
        self.write("src/dd.cc", '#include "dec/use.h"\n#include "anon.h"\n'
                   'namespace { struct Anon { int x; }; }\nstruct Holder { '
                   'Anon a; Hdr h; };\nint f(Holder *h) { return h->a.x + '
                   'sign(1u, 2); }\n')
        os.makedirs(os.path.join(self.work, "build"))
        argv = ["g++", "-Wall", "-Wextra", "-g", "-O1", "-c", "../src/dd.cc",
                "-o", "dd.o", "-gsplit-dwarf"]
        self.assertSameArtifacts(argv, ["build/dd.o", "build/dd.dwo"],
                                 cwd=os.path.join(self.work, "build"))
        local = self.local(argv, cwd=os.path.join(self.work, "build"))
        self.assertIn(b"return u < i;", local.stderr)   # quoted via ../
        self.assertNotIn(b"subobject", local.stderr)

    def test_locale_and_colour_match_local(self):
        self.write("src/e.c", ERROR_SOURCE)
        argv = ["gcc", "-Wall", "-c", "src/e.c", "-o", "obj/e.o"]
        self.env["LC_ALL"] = "C.UTF-8"
        local = self.local(argv)
        remote = self.distcc(argv)
        self.assertIn("\u2018".encode(), local.stderr)   # typographic quote
        self.assertEqual(remote.stderr, local.stderr)
        # A terminal on stderr gets colour from a local compile.
        import pty
        outputs = []
        for cmd in (argv, [sys.executable, DISTCC_PY] + argv):
            master, slave = pty.openpty()
            try:
                p = subprocess.Popen(cmd, cwd=self.work, env=self.env,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=slave)
                os.close(slave)
                chunks = []
                deadline = time.monotonic() + TIMEOUT
                while True:
                    import select
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([master], [], [],
                                                      left)[0]:
                        self.fail("no EOF from the compiler's terminal")
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:          # EIO: the child closed it
                        break
                    if not chunk:
                        break
                    chunks.append(chunk)
                p.wait(timeout=TIMEOUT)
            finally:
                os.close(master)
            outputs.append(b"".join(chunks))
        self.assertIn(b"\x1b[", outputs[0])
        self.assertEqual(outputs[1], outputs[0])

    def test_dead_host_falls_back_locally(self):
        env = dict(self.env, DISTCC_HOSTS=self.sshd.host("distcc-dead"),
                   DISTCC_FALLBACK="1")
        argv = ["gcc", "-O2", "-c", "src/a.c", "-o", "obj/a.o"]
        local = self.local(argv)
        want = self.read("obj/a.o")
        os.unlink(os.path.join(self.work, "obj/a.o"))
        r = self.distcc(argv, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.read("obj/a.o"), want)
        self.assertEqual(local.returncode, 0)
        self.assertRegex(r.stderr.decode(),
                         r"^distcc.py: transport: distcc-dead: ssh failed "
                         r"\(exit 255.*compiling src/a.c locally\n$")

    def test_dead_host_without_fallback_fails_cleanly(self):
        env = dict(self.env, DISTCC_HOSTS=self.sshd.host("distcc-dead"))
        r = self.distcc(["gcc", "-O2", "-c", "src/a.c", "-o", "obj/a.o"],
                        env=env)
        self.assertEqual(r.returncode, distcc.EXIT_DISTCC_FAILED)
        self.assertFalse(os.path.exists(os.path.join(self.work, "obj/a.o")))
        lines = r.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertRegex(lines[0], r"^distcc.py: transport: distcc-dead: "
                         r"ssh failed")
        self.assertEqual([n for n in os.listdir(os.path.join(self.work, "obj"))
                          if n.endswith(".tmp")], [])

    def test_wrong_remote_command_is_explained(self):
        env = dict(self.env, DISTCC_HOSTS="@distcc-test:/no/such/distcc.py")
        r = self.distcc(["gcc", "-c", "src/a.c", "-o", "obj/a.o"], env=env)
        self.assertEqual(r.returncode, distcc.EXIT_DISTCC_FAILED)
        self.assertIn("not found (exit 127)", r.stderr.decode())
        self.assertIn("@host:/path/to/distcc.py", r.stderr.decode())

    def test_local_only_compiles_exec_the_compiler(self):
        r = self.distcc(["gcc", "-E", "src/a.c"])
        self.assertEqual(r.returncode, 0)
        self.assertEqual(r.stdout, self.local(["gcc", "-E", "src/a.c"]).stdout)
        self.assertIn(b"+ 42", r.stdout)     # local.h's macro, expanded
        self.assertIn("local: -E only preprocesses", self.trace())
        self.assertEqual(self.relay_pids(), set())

    def test_no_hosts_compiles_locally(self):
        env = dict(self.env)
        del env["DISTCC_HOSTS"]
        r = self.distcc(["gcc", "-c", "src/a.c", "-o", "obj/a.o"], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("local: no remote hosts", self.trace())

    def test_hosts_file(self):
        env = dict(self.env)
        del env["DISTCC_HOSTS"]
        os.makedirs(self.distcc_dir, mode=0o700)
        with open(os.path.join(self.distcc_dir, "hosts"), "w") as f:
            f.write("# build hosts\n%s\n" % self.default_host)
        r = self.distcc(["gcc", "-c", "src/a.c", "-o", "obj/a.o"], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("compiled on distcc-test", self.trace())


class TestManyHosts(EndToEnd):
    """Host choice, limits, backoff and compiler identity over real ssh."""

    SLOW = "static const int t[] = {%s};\nint get%%d(int i){return t[i];}\n" \
        % ",".join(str(i * 7 % 13) for i in range(40000))

    def server_script(self, name, real, limit=""):
        """A host whose gcc is REAL, logging each compile's start and end;
        return (its DISTCC_HOSTS entry, the log's path)."""
        log = os.path.join(self.host_dir, name + ".gcc-log")
        host = self.host_with_gcc(name, """
echo "start $$" >> %s
%s "$@"
rc=$?
echo "end $$" >> %s
exit $rc
""" % (log, real, log), limit=limit, version='exec %s "$@"' % real)
        return host, log

    def make(self, n, env, jobs=8):
        names = ["s%d" % i for i in range(n)]
        for i, name in enumerate(names):
            self.write("p/%s.c" % name, self.SLOW % i)
        with open(os.path.join(self.work, "p/Makefile"), "w") as f:
            f.write("all: %s\n%%.o: %%.c\n\t$(CC) -O1 -c $< -o $@\n"
                    % " ".join(n + ".o" for n in names))
        r = run(["make", "-j%d" % jobs, "CC=%s %s gcc" % (sys.executable,
                                                           DISTCC_PY)],
                cwd=os.path.join(self.work, "p"), env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        for name in names:
            want = run(["gcc", "-O1", "-c", "p/%s.c" % name, "-o",
                        "p/want.o"], cwd=self.work)
            self.assertEqual(want.returncode, 0)
            self.assertEqual(self.read("p/%s.o" % name), self.read("p/want.o"),
                             name)
        return r

    def test_localslots_limits_compiles_that_run_here(self):
        real = shutil.which("gcc")
        log = os.path.join(self.work, "local.log")
        self.write("lbin/gcc", "#!/bin/sh\necho \"start $$\" >> %s\n"
                   "sleep 0.3\n%s \"$@\"\nrc=$?\necho \"end $$\" >> %s\n"
                   "exit $rc\n" % (log, real, log))
        os.chmod(os.path.join(self.work, "lbin/gcc"), 0o755)
        self.write("ls/a.c", "int a;\n")
        env = dict(self.env, DISTCC_HOSTS="--localslots=1 " + self.default_host)
        procs = [subprocess.Popen(
            [sys.executable, DISTCC_PY, os.path.join(self.work, "lbin/gcc"),
             "-E", "ls/a.c", "-o", "ls/a%d.i" % i], cwd=self.work, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(3)]
        for p in procs:
            out, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, err)
        events = self.read("local.log").decode().split()[::2]
        self.assertEqual(events, ["start", "end"] * 3)   # one at a time

    def test_dead_host_first_is_tried_a_bounded_number_of_times(self):
        env = dict(self.env, DISTCC_HOSTS="%s %s" % (
            self.sshd.host("distcc-dead"), self.default_host))
        self.make(10, env)
        connects = self.trace().count("connecting: ")
        dead = len(re.findall(r"connecting: .* distcc-dead ", self.trace()))
        self.assertGreaterEqual(dead, 1)
        self.assertLessEqual(dead, 2, "the dead host was tried %d times"
                             % dead)
        self.assertEqual(connects - dead, 1)
        self.assertEqual(self.trace().count("compiled on distcc-test"), 10)

    def test_limit_one_is_never_exceeded(self):
        host, log = self.server_script("one", "/usr/bin/gcc", limit="/1")
        env = dict(self.env, DISTCC_HOSTS=host)
        self.make(6, env)
        depth = peak = starts = 0
        with open(log) as f:
            for line in f:
                depth += 1 if line.startswith("start") else -1
                starts += line.startswith("start")
                peak = max(peak, depth)
        self.assertEqual(starts, 6)
        self.assertEqual(peak, 1, "a /1 host ran %d compiles at once" % peak)

    def test_host_with_another_compiler_gets_no_job(self):
        if not shutil.which("clang"):
            self.skipTest("clang is not installed")
        host, log = self.server_script("other", shutil.which("clang"))
        env = dict(self.env, DISTCC_HOSTS="%s %s" % (host, self.default_host))
        self.make(4, env, jobs=4)
        self.assertFalse(os.path.exists(log), "the clang host got a job")
        self.assertIn("differs from the local one", self.trace())
        self.assertEqual(self.trace().count("compiled on distcc-test"), 4)
        r = self.distcc(["--show-hosts"], env=env)
        lines = r.stdout.decode().splitlines()
        self.assertIn("compiler differs: gcc: ", lines[0])
        self.assertIn("clang version", lines[0])
        # Without /LIMIT, a host's limit is the CPU count it reported,
        # plus one.
        self.assertIn("limit %-3d ok" % (len(os.sched_getaffinity(0)) + 1), lines[1])

    def test_localhost_slots_compile_here(self):
        # No races: a free localhost slot would win them all here, where
        # the "host" is this machine (TestRace has them).
        env = dict(self.env, DISTCC_HOSTS="localhost/2 @distcc-test/2:%s"
                   % DISTCC_PY, DISTCC_RACE="0")
        self.make(8, env)
        local = self.trace().count("local slot: ")
        remote = self.trace().count("compiled on distcc-test")
        self.assertEqual(local + remote, 8)
        self.assertGreater(local, 0)
        self.assertGreater(remote, 0)


class TestTakeBack(EndToEnd):
    """A job still queued on a host when a localhost slot comes free is
    cancelled there and compiled here (see "Taking a job back")."""

    def test_a_queued_job_is_taken_back_when_the_local_slot_frees(self):
        # The host runs one compile at a time (its server is pinned to one
        # CPU) and its gcc takes 3 s; a is sent first and compiles there, b
        # queues behind it.  The test holds the localhost slot until both
        # are on the host.
        real = shutil.which("gcc")
        log = os.path.join(self.host_dir, "host-gcc.log")
        gcc = self.host_file("slow-bin/gcc", '#!/bin/sh\ncase " $* " in '
                             '*" -v "*) exec %s "$@";; esac\necho "$*" >> %s\n'
                             'sleep 3\nexec %s "$@"\n' % (real, log, real))
        host = self.host_script("pinned", "PATH=%s:$PATH; DISTCC_SANDBOX=0; "
                                "export PATH DISTCC_SANDBOX"
                                % os.path.dirname(gcc), limit="/2",
                                server="taskset -c %d %s %s -i" % (
                                    min(os.sched_getaffinity(0)),
                                    sys.executable, DISTCC_PY))
        env = dict(self.env, DISTCC_HOSTS=host + " localhost/1")
        slots = os.path.join(self.distcc_dir, "slots")
        os.makedirs(slots, mode=0o700, exist_ok=True)
        held = distcc.try_slot(slots, distcc.parse_host("localhost/1").key()
                               + ".0")
        self.assertIsNotNone(held)
        self.write("tb/a.c", WARNING_SOURCE)
        self.write("tb/b.c", "int b(void) { return 2; }\n")
        procs = []
        try:
            for name in ("a", "b"):
                procs.append(subprocess.Popen(
                    [sys.executable, DISTCC_PY, "gcc", "-Wall", "-c",
                     "tb/%s.c" % name, "-o", "tb/%s.o" % name],
                    cwd=self.work, env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE))
                deadline = time.monotonic() + 20
                while "send tb/%s.c to" % name not in self.trace() and \
                        time.monotonic() < deadline:
                    time.sleep(0.02)
            time.sleep(0.5)              # b hears that it queues
            self.assertNotIn("taken back", self.trace())
            os.close(held)
            held = None
            results = [p.communicate(timeout=TIMEOUT) for p in procs]
        finally:
            if held is not None:
                os.close(held)
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate(timeout=10)
        for p, (out, err) in zip(procs, results):
            self.assertEqual(p.returncode, 0, err)
        # Which of the two the relay sent on first is up to its threads.
        trace = self.trace()
        back = re.findall(r"tb/(\w)\.c: taken back from distcc-test's "
                          r"queue", trace)
        self.assertEqual(len(back), 1, trace)
        kept = "b" if back[0] == "a" else "a"
        self.assertIn("tb/%s.c compiled on distcc-test" % kept, trace)
        self.assertIn("local slot: gcc -Wall -c tb/%s.c" % back[0], trace)
        self.assertIn("cancelled", trace)
        with open(log) as f:
            self.assertNotIn("%s.c" % back[0], f.read(),
                             "compiled on the host too")
        for name, (out, err) in zip("ab", results):
            argv = ["gcc", "-Wall", "-c", "tb/%s.c" % name, "-o",
                    "tb/%s.o" % name]
            got = self.read("tb/%s.o" % name)
            local = self.local(argv)
            self.assertEqual(err, local.stderr, name)
            self.assertEqual(self.read("tb/%s.o" % name), got, name)
        records, _ = distcc.read_stats(self.distcc_dir)
        self.assertEqual(sorted(r["reason"] for r in records),
                         ["", "taken back from distcc-test"])


class TestLocalNice(EndToEnd):
    """A compile in a localhost slot yields to the wrappers and
    preprocessors that feed the hosts; one that must run here does not."""

    def test_localhost_slot_compiles_at_lower_priority(self):
        if not os.path.exists("/proc/self/stat"):
            self.skipTest("no /proc here")
        real = shutil.which("gcc")
        nices = os.path.join(self.work, "nices")
        self.write("bin/gcc", '#!/bin/sh\nawk \'{print $19}\' /proc/$$/stat '
                   '>>%s\nexec %s "$@"\n' % (nices, real))
        os.chmod(os.path.join(self.work, "bin/gcc"), 0o755)
        # A tie between free slots goes to the first host: localhost.
        env = dict(self.env, DISTCC_HOSTS="localhost/1 @distcc-test/1:%s"
                   % DISTCC_PY, PATH=os.path.join(self.work, "bin") + ":" +
                   self.env["PATH"])
        self.write("src/a.c", "int main(void) { return 0; }\n")
        r = self.distcc(["gcc", "-c", "src/a.c", "-o", "a.o"], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("local slot: gcc -c src/a.c", self.trace())
        r = self.distcc(["gcc", "a.o", "-o", "a.out"], env=env)   # a link
        self.assertEqual(r.returncode, 0, r.stderr)
        base = os.getpriority(os.PRIO_PROCESS, 0)
        with open(nices) as f:
            self.assertEqual([int(n) for n in f.read().split()],
                             [min(19, base + distcc.LOCAL_SLOT_NICE), base])


class TestFaults(EndToEnd):
    """Faults injected for real; the build completes and nothing is lost."""

    SLOW = TestManyHosts.SLOW

    def setUp(self):
        EndToEnd.setUp(self)
        self.env.update(DISTCC_FALLBACK="1", DISTCC_BACKOFF_PERIOD="0.5")

    def compile_while(self, name, action, env=None, trigger="send "):
        """Compile f/NAME.c in the background, run ACTION once the trace
        shows TRIGGER, and return (process result, stderr)."""
        self.write("f/%s.c" % name, self.SLOW % 0)
        p = subprocess.Popen(
            [sys.executable, DISTCC_PY, "gcc", "-O1", "-c", "f/%s.c" % name,
             "-o", "f/%s.o" % name], cwd=self.work, env=env or self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while trigger + "f/%s.c" % name not in self.trace():
            if time.monotonic() > deadline or p.poll() is not None:
                break
            time.sleep(0.005)
        action()
        out, err = p.communicate(timeout=TIMEOUT)
        return p.returncode, err

    def assertNothingLeftBehind(self):
        """At most one relay and its one ssh per host; no job dirs."""
        time.sleep(0.5)                 # let killed processes be reaped
        relays = [p for p in self.relay_pids() if process_alive(p)]
        self.assertLessEqual(len(relays), 1)
        sshs = [p for p in all_pids() if process_alive(p) and
                cmdline(p)[:1] == ["ssh"] and
                any(self.distcc_dir in a for a in cmdline(p))]
        self.assertLessEqual(len(sshs), len(relays), [cmdline(p)
                                                      for p in sshs])
        self.assertEqual(self.host_job_dirs(), [],
                         "job dirs left on the host")

    def assertObjectGood(self, name):
        want = run(["gcc", "-O1", "-c", "f/%s.c" % name, "-o", "f/want.o"],
                   cwd=self.work)
        self.assertEqual(want.returncode, 0)
        self.assertEqual(self.read("f/%s.o" % name), self.read("f/want.o"))
        leftovers = [n for n in os.listdir(os.path.join(self.work, "f"))
                     if n.endswith(".tmp")]
        self.assertEqual(leftovers, [])

    def test_relay_killed_mid_job(self):
        self.write("f/warm.c", "int w;\n")
        self.assertEqual(self.distcc(["gcc", "-c", "f/warm.c", "-o",
                                      "f/warm.o"]).returncode, 0)
        (relay,) = self.relay_pids()
        status, err = self.compile_while(
            "r", lambda: os.kill(relay, signal.SIGKILL))
        self.assertEqual(status, 0, err)
        self.assertObjectGood("r")
        # A new relay took over the stale socket and lock, and compiled it.
        self.assertFalse(process_alive(relay))
        (new,) = self.relay_pids()
        self.assertNotEqual(new, relay)
        self.assertIn("compiled on distcc-test", self.trace())
        self.assertNotIn(b"Traceback", err)
        self.assertNothingLeftBehind()

    def test_compiler_killed_on_host(self):
        self.env["DISTCC_HOSTS"] = self.host_with_gcc("kill", "kill -9 $$")
        self.write("f/k.c", self.SLOW % 0)
        r = self.distcc(["gcc", "-O1", "-c", "f/k.c", "-o", "f/k.o"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr.decode(), r"gcc was killed by SIGKILL.*"
                         r"compiling f/k.c locally")
        self.assertObjectGood("k")

    def test_host_out_of_temp_space(self):
        if os.getuid() != 0:
            self.skipTest("mounting a small tmpfs needs root")
        small = os.path.join(self.host_dir, "small")
        os.mkdir(small)
        r = run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", small])
        if r.returncode:
            self.skipTest("cannot mount a tmpfs: %s" % r.stderr)
        try:
            self.env["DISTCC_HOSTS"] = self.host_script(
                "full", "TMPDIR=%s; export TMPDIR" % small)
            self.write("f/d.c", self.SLOW % 0)
            r = self.distcc(["gcc", "-O1", "-c", "f/d.c", "-o", "f/d.o"])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stderr.decode(), r"(No space left|no space "
                             r"left).*compiling f/d.c locally")
            self.assertObjectGood("d")
            self.assertEqual(self.host_job_dirs(small), [])
        finally:
            run(["umount", small])

    def test_session_cut_while_object_streams_back(self):
        self.write("f/warm.c", "int w;\n")
        self.assertEqual(self.distcc(["gcc", "-c", "f/warm.c", "-o",
                                      "f/warm.o"]).returncode, 0)
        (relay,) = self.relay_pids()

        def cut():
            for pid in child_pids(relay):
                os.kill(pid, signal.SIGKILL)
        status, err = self.compile_while("c", cut)
        self.assertEqual(status, 0, err)
        self.assertObjectGood("c")
        self.assertNothingLeftBehind()

    def test_garbage_into_the_relay_socket(self):
        self.write("f/warm.c", "int w;\n")
        self.assertEqual(self.distcc(["gcc", "-c", "f/warm.c", "-o",
                                      "f/warm.o"]).returncode, 0)
        (sock,) = [os.path.join(self.distcc_dir, n)
                   for n in os.listdir(self.distcc_dir) if n.endswith(".sock")]
        no_path = distcc.pack_body({"compiler": "gcc"}, [], distcc.MARSHAL)
        cases = [
            (b"GET / HTTP/1.0\r\n\r\n", "magic"),
            (HEADER.pack(distcc.MAGIC, distcc.JOB, 0, 0,
                                distcc.MAX_FRAME + 1), "over the"),
            (HEADER.pack(distcc.MAGIC, distcc.JOB, 0, 0, 100) + b"x",
             "expected 100 bytes"),
            (HEADER.pack(distcc.MAGIC, distcc.RESULT, 0, 0, 0),
             "expected a JOB"),
            (b"".join([HEADER.pack(distcc.MAGIC, distcc.JOB, 0, 0, 3),
                       b"abc"]), "metadata"),
            # A job our wrapper would never send: no local compiler path.
            (b"".join([distcc.frame_parts(distcc.JOB, 0, no_path)] +
                      no_path), "local compiler"),
        ]
        for data, words in cases:
            c = socket.socket(socket.AF_UNIX)
            c.settimeout(30)
            c.connect(sock)
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            with c.makefile("rb") as f:
                kind, _, body = distcc.read_frame(f)
            c.close()
            self.assertEqual(kind, distcc.ERROR, words)
            # The relay's socket speaks marshal, not JSON (see Framing).
            with self.assertRaises(distcc.DistccError, msg=words) as cm:
                distcc.raise_error_body(body, distcc.MARSHAL)
            self.assertIn(words, cm.exception.detail, words)
        r = self.distcc(["gcc", "-c", "f/warm.c", "-o", "f/warm.o"])
        self.assertEqual(r.returncode, 0)
        self.assertEqual(self.trace().count("compiled on"), 2)

    def test_other_users_are_refused_by_the_relay(self):
        if os.getuid() != 0:
            self.skipTest("switching to another uid needs root")
        self.write("f/warm.c", "int w;\n")
        self.assertEqual(self.distcc(["gcc", "-c", "f/warm.c", "-o",
                                      "f/warm.o"]).returncode, 0)
        (sock,) = [os.path.join(self.distcc_dir, n)
                   for n in os.listdir(self.distcc_dir) if n.endswith(".sock")]
        # Open the modes wide, so that only the credential check is left.
        os.chmod(self.work, 0o711)
        os.chmod(self.distcc_dir, 0o711)
        os.chmod(sock, 0o666)
        job = b"".join(distcc.pack_body({}, [], distcc.MARSHAL))
        pid = os.fork()
        if pid == 0:
            try:
                os.setuid(65534)
                c = socket.socket(socket.AF_UNIX)
                c.settimeout(10)
                c.connect(sock)
                try:
                    c.sendall(job)
                    answer = c.recv(1)
                except (ConnectionResetError, BrokenPipeError):
                    answer = b""        # closed on us: refused
                os._exit(3 if answer else 0)
            except BaseException as e:
                sys.stderr.write("child: %r\n" % e)
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.WEXITSTATUS(status), 0, "nobody got an answer")
        self.assertIn("refused a connection from uid 65534", self.trace())

    def test_restricted_key_works(self):
        env = dict(self.env, DISTCC_HOSTS="@distcc-restricted",
                   DISTCC_FALLBACK="0")
        self.write("f/rk.c", "int rk(void) { return 7; }\n")
        r = self.distcc(["gcc", "-O2", "-c", "f/rk.c", "-o", "f/rk.o"],
                        env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("compiled on distcc-restricted", self.trace())
        # The key runs the server whatever command the client asks for.
        r = run(["ssh", "-F", self.sshd.config, "-o", "BatchMode=yes",
                 "distcc-restricted", "cat", "/etc/hostname"], timeout=30)
        self.assertTrue(r.stdout.startswith(b"DISTCC.PY "), r.stdout[:80])

    def test_separate_distcc_dirs_never_share_a_relay(self):
        self.write("f/a.c", "int a;\n")
        other = dict(self.env, DISTCC_DIR=os.path.join(self.work, "other"))
        for env in (self.env, other):
            r = self.distcc(["gcc", "-c", "f/a.c", "-o", "f/a.o"], env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
        mine = self.relay_pids()
        self.distcc_dir, saved = other["DISTCC_DIR"], self.distcc_dir
        try:
            theirs = self.relay_pids()
            self.assertEqual(len(mine), 1)
            self.assertEqual(len(theirs), 1)
            self.assertNotEqual(mine, theirs)
        finally:
            for pid in self.relay_pids():
                end_process(pid)
            self.stop_ssh_masters()
            self.distcc_dir = saved

    def test_missing_source_and_output_dir_fail_like_gcc(self):
        for argv in (["gcc", "-c", "f/none.c", "-o", "f/none.o"],
                     ["gcc", "-c", "src.c", "-o", "no/such/dir/x.o"]):
            self.write("src.c", "int s;\n")
            local = self.local(argv)
            remote = self.distcc(argv)
            self.assertNotEqual(local.returncode, 0)
            self.assertEqual(remote.returncode, local.returncode)
            self.assertEqual(remote.stderr, local.stderr)

    CHAOS_ROUNDS = int(os.environ.get("DISTCC_TEST_CHAOS_ROUNDS", "1"))

    def test_chaos_build(self):
        """A -j8 build while relays and ssh are killed at random moments."""
        import random
        rng = random.Random(1234)
        names = ["x%d" % i for i in range(24)]
        for i, name in enumerate(names):
            self.write("x/%s.c" % name, (self.SLOW % i).replace(
                "40000", "%d" % (2000 + i * 997)))
        with open(os.path.join(self.work, "x/Makefile"), "w") as f:
            f.write("all: %s\n%%.o: %%.c\n\t$(CC) -O1 -c $< -o $@\n"
                    % " ".join(n + ".o" for n in names))
        want = {}
        for name in names:
            r = run(["gcc", "-O1", "-c", "x/%s.c" % name, "-o", "x/w.o"],
                    cwd=self.work)
            self.assertEqual(r.returncode, 0)
            want[name] = self.read("x/w.o")
        kills = 0
        for _ in range(self.CHAOS_ROUNDS):
            for name in names:
                try:
                    os.unlink(os.path.join(self.work, "x/%s.o" % name))
                except FileNotFoundError:
                    pass
            make = subprocess.Popen(
                ["make", "-j8", "CC=%s %s gcc" % (sys.executable, DISTCC_PY)],
                cwd=os.path.join(self.work, "x"), env=self.env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + TIMEOUT
            while make.poll() is None and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.05, 0.4))
                for relay in self.relay_pids():
                    victims = [relay] if rng.random() < 0.4 else \
                        child_pids(relay)
                    for pid in victims:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            kills += 1
                        except ProcessLookupError:
                            pass  # ended by itself meanwhile
            out, err = make.communicate(timeout=TIMEOUT)
            self.assertEqual(make.returncode, 0, err[-2000:])
            got = [n for n in names if self.read("x/%s.o" % n) != want[n]]
            self.assertEqual(got, [])
            leftovers = [n for n in os.listdir(os.path.join(self.work, "x"))
                         if n.endswith(".tmp")]
            self.assertEqual(leftovers, [])
            self.assertNotIn(b"Traceback", err)
            self.assertNothingLeftBehind()
        self.assertGreater(kills, 0)
        sys.stderr.write("(%d kills) " % kills)


FAKE_HOST = r"""
import os, shutil, sys, time, zlib
sys.path.insert(0, %(here)r)
import distcc
mode, log = %(mode)r, %(log)r
out, inp = sys.stdout.buffer, sys.stdin.buffer
out.write(b"DISTCC.PY %%d 0.4.0 cpus=100000\n" %% distcc.PROTOCOL)
out.flush()
gcc = distcc.compiler_identity(shutil.which("gcc"))
while True:
    frame = distcc.read_frame(inp)
    if frame is None:
        break
    kind, job_id, body = frame
    if kind == distcc.QUERY:
        distcc.write_frame(out, distcc.IDENTITY, job_id, distcc.pack_body(
            {"compiler": "gcc", "identity": gcc}))
        continue
    if kind != distcc.JOB:
        continue
    meta, blobs = distcc.unpack_body(body)
    with open(log, "a") as f:
        f.write(repr(meta.get("extra")) + "\n")
    if mode == "progress":
        for i in range(600):
            distcc.write_frame(out, distcc.PROGRESS, job_id, distcc.dump_meta(
                {"state": "compile", "cpu": float(i)}))
            time.sleep(0.5)
        continue
    left = []
    result, got = distcc.unpack_body(b"".join(
        distcc.compile_job(body, left, distcc.JobControl())))
    for d in left:
        shutil.rmtree(d)
    got = [bytes(b) for b in got]
    if mode == "stderr":
        got[1] = b"\x1b]0;pwned\x07\x1b[2Jwarning \x1b[01;31m!\x1b[m\n"
        result["temps"] = "/tmp/\x1b]0;kept\x07"
    if mode == "dwo":
        result["outputs"].insert(0, {"name": "dwo", "raw": 3})
        got.insert(2, zlib.compress(b"dwo"))
    if mode == "listname":
        result["outputs"].insert(0, {"name": ["output"], "raw": 3})
        got.insert(2, zlib.compress(b"odd"))
    if mode == "missing" and not meta.get("extra"):
        result["missing"] = ["../secret.h", "/etc/passwd", "src/real.h",
                             "src/other.h", meta["cwd"] + "/src/other.h",
                             meta["cwd"] + "/src/../../secret.h", ["/"]]
    distcc.write_frame(out, distcc.RESULT, job_id,
                       distcc.pack_body(result, got))
"""


class TestHostileHost(EndToEnd):
    """A host that answers as it likes (a fake server speaking the
    protocol): the client trusts nothing it says."""

    def fake(self, mode):
        """Point DISTCC_HOSTS at a fake server in MODE; return its log of
        the extra files each job brought."""
        log = os.path.join(self.host_dir, "fake-%s.log" % mode)
        script = self.host_file("fake-%s.py" % mode, FAKE_HOST % {
            "here": HERE, "mode": mode, "log": log})
        self.env.update(DISTCC_HOSTS=self.host_script(
            "fake-" + mode, "", server="%s %s" % (sys.executable, script)),
            DISTCC_FALLBACK="1")
        return log

    def compile(self, text='#include "real.h"\nint f(void) { return R; }\n'):
        self.write("sub/src/a.c", text)
        self.write("sub/src/real.h", "#define R 1\n")
        self.write("sub/src/other.h", "secret other\n")
        self.write("secret.h", "secret\n")
        argv = ["gcc", "-O2", "-c", "src/a.c", "-o", "a.o"]
        cwd = os.path.join(self.work, "sub")
        r = run([sys.executable, DISTCC_PY] + argv, env=self.env, cwd=cwd)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = self.read("sub/a.o")
        run(argv, cwd=cwd)
        self.assertEqual(self.read("sub/a.o"), got)
        return r

    def test_its_output_reaches_the_terminal_with_colours_only(self):
        self.fake("stderr")
        r = self.compile()
        self.assertIn(b"?]0;pwned??[2Jwarning \x1b[01;31m!\x1b[m\n",
                      r.stderr)
        # Where it kept the job's files: said only if asked, and cleaned.
        self.assertNotIn(b"kept", r.stderr)
        self.env["DISTCC_SAVE_TEMPS"] = "1"
        r = self.compile()
        self.assertIn(b"distcc-test:/tmp/?]0;kept?", r.stderr)

    def test_it_cannot_add_a_dwo_nobody_asked_for(self):
        self.fake("dwo")
        r = self.compile()
        self.assertIn(b"protocol: distcc-test: RESULT has outputs", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.work, "sub/a.dwo")))

    def test_it_cannot_break_the_client_with_odd_output_names(self):
        self.fake("listname")
        r = self.compile()
        self.assertIn(b"protocol: distcc-test: RESULT has outputs", r.stderr)

    def test_it_gets_only_headers_the_job_included(self):
        log = self.fake("missing")
        self.compile()
        with open(log) as f:
            self.assertEqual(f.read().splitlines(),
                             ["None", "['src/real.h']"])

    def test_its_cpu_count_is_bounded(self):
        self.fake("stderr")
        self.compile()
        r = self.distcc(["-j"])
        self.assertEqual(r.stdout.strip(), b"%d" % (distcc.MAX_HOST_CPUS + 1))
        self.compile()
        slots = [n for n in os.listdir(os.path.join(self.distcc_dir, "slots"))
                 if n.startswith("distcc-test-")]
        self.assertEqual(len(slots), distcc.MAX_HOST_CPUS + 1)

    def test_heartbeats_alone_do_not_hold_a_job(self):
        self.fake("progress")
        self.env["DISTCC_JOB_TIMEOUT"] = "3"
        started = time.monotonic()
        r = self.compile()
        self.assertLess(time.monotonic() - started, 30)
        self.assertIn(b"no answer in 3 s", r.stderr)


class TestIntegrations(EndToEnd):
    """The ways builds call a compiler: make, CMake launchers, ccache,
    masquerade links, configure."""

    def setUp(self):
        EndToEnd.setUp(self)
        for i in range(4):
            self.write("proj/f%d.c" % i, "#include <stdio.h>\nint f%d(void) "
                       "{ return printf(\"%d\\n\"); }\n" % (i, i))
        self.write("proj/g.cc", "#include <string>\nstd::string g() "
                   "{ return \"g\"; }\n")

    def test_monitor_stats_and_summary_of_a_parallel_build(self):
        # The host's gcc sleeps 1 s a compile, so --monitor sees jobs there.
        env = dict(self.env, DISTCC_HOSTS=self.host_with_gcc(
            "slow", 'sleep 1\nexec %s "$@"' % shutil.which("gcc"), "/2"))
        self.write("proj/main.c", "int f0(void), f1(void), f2(void), "
                   "f3(void);\nint main(void) { return f0() + f1() + f2() "
                   "+ f3(); }\n")
        self.write("proj/Makefile", "prog: main.o f0.o f1.o f2.o f3.o\n"
                   "\t$(CC) -o $@ $^\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n")
        cc = "%s %s gcc" % (sys.executable, DISTCC_PY)
        with open(os.path.join(self.work, "monitor.txt"), "wb") as out:
            monitor = subprocess.Popen(
                [sys.executable, DISTCC_PY, "--monitor", "0.2", "30"],
                env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                r = run(["make", "-j5", "CC=" + cc],
                        cwd=os.path.join(self.work, "proj"), env=env)
                self.assertEqual(monitor.wait(timeout=60), 0)
            finally:
                if monitor.poll() is None:
                    monitor.kill()
                    monitor.wait()
        self.assertEqual(r.returncode, 0, r.stderr)
        screens = [s for s in self.read("monitor.txt").decode().split("\n\n")
                   if s.strip()]
        on_host = [s for s in screens if re.search(
            r"(?m)^ +\d+  compile +distcc-test +\d+\.\ds  f?\w+\.c$", s)]
        self.assertTrue(on_host, screens)
        # Never more jobs on the host than its /2 allows.
        for screen in on_host:
            (row,) = [l for l in screen.splitlines()
                      if l.startswith("distcc-test ")]
            self.assertLessEqual(sum(map(int, row.split()[1:])), 2, screen)
        self.assertIn("finished since --monitor started: 6 jobs: 5 remote "
                      "(distcc-test 5), 1 local "
                      "(1 no -c or -S)", screens[-1])
        stats = json.loads(run([sys.executable, DISTCC_PY, "--stats"],
                               env=env).stdout)
        self.assertEqual((stats["jobs"], stats["remote"], stats["local"]),
                         (6, 5, 1))
        self.assertEqual(stats["hosts"]["distcc-test"], {"remote": 5})
        self.assertEqual(stats["local_reasons"], {"no -c or -S": 1})
        self.assertGreater(stats["bytes"]["preprocessed"],
                           2 * stats["bytes"]["sent"])
        self.assertGreater(stats["bytes"]["objects"], 0)
        # The host's gcc slept 1 s a job; the host measured it.
        self.assertGreaterEqual(stats["seconds"]["compile"], 5.0)
        self.assertEqual(stats["in_flight"], [])
        summary = run([sys.executable, DISTCC_PY, "--summary"], env=env)
        self.assertEqual(summary.stdout.decode(),
                         "6 jobs: 5 remote (distcc-test 5), 1 local "
                         "(1 no -c or -S)\n")
        run([sys.executable, DISTCC_PY, "--zero-stats"], env=env)
        summary = run([sys.executable, DISTCC_PY, "--summary"], env=env)
        self.assertEqual(summary.stdout.decode(), "0 jobs: 0 remote, "
                         "0 local\n")

    def test_skip_local_retry_and_save_temps(self):
        self.write("proj/lost.c", "int lost;\n")
        dead = dict(self.env, DISTCC_HOSTS=self.sshd.host("distcc-dead"),
                    DISTCC_FALLBACK="1")
        r = self.distcc(["gcc", "-c", "proj/lost.c", "-o", "proj/lost.o"],
                        env=dict(dead, DISTCC_SKIP_LOCAL_RETRY="1"))
        self.assertEqual(r.returncode, distcc.EXIT_DISTCC_FAILED, r.stderr)
        self.assertIn("distcc-dead", r.stderr.decode())
        self.assertFalse(os.path.exists(os.path.join(self.work, "proj/lost.o")))
        for name in os.listdir(self.distcc_dir):
            if name.startswith("backoff-"):     # try it again at once
                os.unlink(os.path.join(self.distcc_dir, name))
        r = self.distcc(["gcc", "-c", "proj/lost.c", "-o", "proj/lost.o"],
                        env=dead)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.exists(os.path.join(self.work, "proj/lost.o")))
        stats = json.loads(run([sys.executable, DISTCC_PY, "--stats"],
                               env=dead).stdout)
        self.assertEqual((stats["failed"], stats["fallback"]), (1, 1))
        self.assertEqual(stats["fallback_reasons"],
                         {"transport fault on distcc-dead": 2})

        # The host keeps its job's files only if its own environment asks
        # too: a client cannot fill a host's disk with them.
        tmp = os.path.join(self.work, "tmp")
        os.mkdir(tmp)
        save = dict(self.env, DISTCC_SAVE_TEMPS="1", TMPDIR=tmp)
        r = self.distcc(["gcc", "-c", "proj/f1.c", "-o", "proj/f1.o"],
                        env=save)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn(b"kept in distcc-test", r.stderr)
        self.assertEqual(self.host_job_dirs(), [])
        os.unlink(os.path.join(tmp, os.listdir(tmp)[0]))
        save["DISTCC_HOSTS"] = self.host_script(
            "saving", "DISTCC_SAVE_TEMPS=1; export DISTCC_SAVE_TEMPS")
        r = self.distcc(["gcc", "-c", "proj/f1.c", "-o", "proj/f1.o"],
                        env=save)
        self.assertEqual(r.returncode, 0, r.stderr)
        err = r.stderr.decode()
        (kept,) = os.listdir(tmp)
        self.assertIn(os.path.join(tmp, kept), err)
        self.assertIn(b"int f1(void)", self.read("tmp/" + kept))
        (host_dir,) = re.findall(r"kept in distcc-test:(\S+)", err)
        try:
            # The host here is this machine: its job dir is still there.
            self.assertTrue(os.path.isfile(os.path.join(
                host_dir + self.work, "proj", "f1.c")), host_dir)
        finally:
            shutil.rmtree(host_dir, ignore_errors=True)

    def test_masquerade_links_find_the_real_compiler(self):
        links = os.path.join(self.work, "masq")
        os.mkdir(links)
        for name in ("gcc", "g++", "cc"):
            os.symlink(DISTCC_PY, os.path.join(links, name))
        env = dict(self.env, PATH=links + os.pathsep + os.environ["PATH"])
        with open(os.path.join(self.work, "proj/Makefile"), "w") as f:
            f.write("all: f0.o f1.o f2.o f3.o g.o\n"
                    "%.o: %.c\n\tgcc -O2 -c $< -o $@\n"
                    "%.o: %.cc\n\tg++ -O2 -c $< -o $@\n")
        r = run(["make", "-j4"], cwd=os.path.join(self.work, "proj"),
                env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.trace().count("compiled on distcc-test"), 5)
        # A local-only command reaches the real compiler, not the link.
        r = run(["cc", "--version"], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"Free Software Foundation", r.stdout)

    def test_cmake_ninja_launcher(self):
        if not (shutil.which("cmake") and shutil.which("ninja")):
            if IN_CI:
                self.fail("cmake and ninja are not installed")
            self.skipTest("cmake and ninja are not installed")
        with open(os.path.join(self.work, "proj/CMakeLists.txt"), "w") as f:
            f.write("cmake_minimum_required(VERSION 3.13)\nproject(p C CXX)\n"
                    "add_library(p STATIC f0.c f1.c f2.c f3.c g.cc)\n")
        objects = {}
        for name, launcher in (("local", None), ("remote", DISTCC_PY)):
            build = os.path.join(self.work, "build-" + name)
            cmd = ["cmake", "-G", "Ninja", "-S",
                   os.path.join(self.work, "proj"), "-B", build]
            if launcher:
                cmd += ["-DCMAKE_C_COMPILER_LAUNCHER=" + launcher,
                        "-DCMAKE_CXX_COMPILER_LAUNCHER=" + launcher]
            r = run(cmd, env=self.env)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = run(["ninja", "-C", build], env=self.env)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            objects[name] = {}
            for d, _, names in os.walk(build):
                for f in names:
                    if f.endswith(".o"):
                        path = os.path.join(d, f)
                        with open(path, "rb") as fh:
                            objects[name][os.path.relpath(path, build)] = \
                                fh.read()
        self.assertEqual(len(objects["local"]), 5)
        self.assertEqual(objects["remote"], objects["local"])
        self.assertEqual(self.trace().count("compiled on distcc-test"), 5)

    def test_ccache_in_front(self):
        if not shutil.which("ccache"):
            if IN_CI:
                self.fail("ccache is not installed")
            self.skipTest("ccache is not installed")
        env = dict(self.env, CCACHE_PREFIX=DISTCC_PY,
                   CCACHE_DIR=os.path.join(self.work, "ccache"))
        with open(os.path.join(self.work, "proj/Makefile"), "w") as f:
            f.write("all: f0.o f1.o f2.o f3.o\n"
                    "%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n")
        proj = os.path.join(self.work, "proj")
        for round in (1, 2):
            r = run(["make", "-B", "-j4", "CC=ccache gcc"], cwd=proj, env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(self.trace().count("compiled on distcc-test"), 4,
                             "round %d" % round)
        stats = run(["ccache", "-s"], env=env).stdout.decode()
        self.assertRegex(stats, r"(?i)hits:\s+4\b")

    def test_check_a_good_host_a_dead_one_and_a_wrong_path(self):
        cases = [
            # host, exit status, words in the output
            ("distcc-test:" + DISTCC_PY, 0,
             ["ok   ssh reaches distcc-test", "gcc matches",
              "object from there is identical", "distcc-test is usable"]),
            ("distcc-dead", 1, ["FAIL ssh distcc-dead", "exit 255",
                                "Connection refused"]),
            ("distcc-test:/no/such/distcc.py", 1,
             ["exit 127", "use @host:/path/to/distcc.py"]),
        ]
        for host, status, words in cases:
            r = self.distcc(["--check", host])
            text = r.stdout.decode()
            self.assertEqual(r.returncode, status, text + r.stderr.decode())
            for w in words:
                self.assertIn(w, text, host)

    def test_configure_style_checks_stay_local_and_right(self):
        self.write("conf/configure", """#!/bin/sh
printf '#include <stdio.h>\\nint main(void) { return 0; }\\n' > conftest.c
if $CC -c conftest.c -o conftest.o 2>/dev/null; then echo "stdio: yes"
else echo "stdio: no"; fi
printf '#include <no/such/header.h>\\n' > conftest.c
if $CC -c conftest.c -o conftest.o 2>/dev/null; then echo "missing: yes"
else echo "missing: no"; fi
""")
        env = dict(self.env, CC="%s %s gcc" % (sys.executable, DISTCC_PY))
        r = run(["sh", "configure"], cwd=os.path.join(self.work, "conf"),
                env=env)
        self.assertEqual(r.stdout.decode(), "stdio: yes\nmissing: no\n")
        self.assertIn("local: configure test programs", self.trace())
        self.assertNotIn("compiled on", self.trace())


class TestRealWorld(EndToEnd):
    """A real C library (Brotli, 30+ files) built with make -j."""

    # Flag sets for the real-world build: (CFLAGS, side files of each
    # object, the source directories built, whether the host compiles,
    # whether make names files by absolute paths, as CMake does).  Each
    # object's stderr is compared too.
    BROTLI_FLAG_SETS = [
        ("-O2 -g -MMD", [".d"], ("common", "dec", "enc"), True, False),
        # -O0: the level where expanded text changes the code, and the
        # quickest build; the decoder's 10 files only (the suite's time is
        # bounded).
        ("-O0 -g -gsplit-dwarf -Wp,-MMD,$(@:.o=.wpd) -DBROTLI_BUILD_PORTABLE",
         [".dwo", ".wpd"], ("common", "dec"), True, False),
        # Debian's (dpkg-buildflags --get CFLAGS, with the build dir's map).
        ("-g -O2 -ffile-prefix-map=$(CURDIR)=. -fstack-protector-strong "
         "-Wformat -Werror=format-security", [], ("common", "dec"), True,
         False),
        # -pedantic compiles here: the host would warn of line markers.
        ("-O1 -pedantic -Wall -Wextra", [], ("dec",), False, False),
        # Warnings that quote project headers (some as dec/../common/...),
        # every name absolute.
        ("-O2 -g -Wall -Wextra -Wpadded -Wsign-conversion -Wcast-qual", [],
         ("common", "dec"), True, True),
    ]

    def test_brotli_with_make(self):
        src = fetch_brotli(self)
        files = sorted(
            os.path.relpath(os.path.join(d, f), src)
            for sub in ("common", "dec", "enc")
            for d, _, names in os.walk(os.path.join(src, sub))
            for f in names if f.endswith(".c"))
        self.assertGreaterEqual(len(files), 30)
        cdir = os.path.join(self.work, "c")
        shutil.copytree(src, cdir)
        before = self.sshd.auth_count()
        remote = 0
        for flags, sides, dirs, on_host, absolute in self.BROTLI_FLAG_SETS:
            subset = [f for f in files if f.split(os.sep)[0] in dirs]
            with self.subTest(flags=flags):
                self.build_brotli_both_ways(cdir, subset, flags, sides,
                                            absolute)
            remote += len(subset) if on_host else 0
        self.assertEqual(self.trace().count("compiled on distcc-test"),
                         remote)
        self.assertEqual(self.sshd.auth_count() - before, 1)

    def build_brotli_both_ways(self, cdir, files, flags, sides, absolute):
        artifacts = [f[:-2] + ext for f in files
                     for ext in [".o", ".err"] + sides]
        with open(os.path.join(cdir, "Makefile"), "w") as f:
            f.write("P = %s\nCFLAGS = %s -I$(P)include\nall: %s\n%%.o: %%.c"
                    "\n\t$(CC) $(CFLAGS) -c $(P)$< -o $(P)$@ 2>$(@:.o=.err)\n"
                    % ("$(CURDIR)/" if absolute else "", flags,
                       " ".join(f[:-2] + ".o" for f in files)))
        builds = []
        for cc in ("gcc", "%s %s gcc" % (sys.executable, DISTCC_PY)):
            r = run(["make", "-B", "-j8", "CC=" + cc], cwd=cdir, env=self.env)
            self.assertEqual(r.returncode, 0, r.stderr)
            builds.append({a: self.read("c/" + a) for a in artifacts})
            for a in artifacts:
                os.unlink(os.path.join(cdir, a))
        local, remote = builds
        different = [a for a in artifacts if not same_object(local[a],
                                                             remote[a])]
        self.assertEqual(different, self.KNOWN_DIFFERENT.get(flags, []),
                         "distributed artifacts differ")

    # Known, and open: one more .debug_line row (block_splitter_inc.h:211:16
    # twice at one address).  gcc's final.cc starts a row when the file
    # name *pointer* changes (notice_source_line: filename !=
    # last_filename); an #include of the same header reuses one string,
    # each line marker makes a new one, and this object has code of two
    # inclusions of that header side by side.  Inlining only the first or
    # second inclusion by hand, with its markers, does the same.  Here so
    # that the test fails the day it changes, or anything else differs.
    KNOWN_DIFFERENT = {"-O2 -g -MMD": ["enc/block_splitter.o"]}


def same_object(local, remote):
    """Whether REMOTE equals LOCAL, up to the ids of split-DWARF units,
    which gcc 12 varies from one local run to the next by itself."""
    return local == remote or mask_dwo_ids(local) == mask_dwo_ids(remote)


def mask_dwo_ids(data):
    """Return ELF object DATA with the 8-byte DWO id of every DWARF 5
    skeleton or split unit in .debug_info(.dwo) zeroed."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return data               # only 64-bit little-endian ELF here
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        base = shoff + i * shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size
    _, stroff, _ = section(shstrndx)
    out = bytearray(data)
    for i in range(shnum):
        name_off, offset, size = section(i)
        name = data[stroff + name_off:data.index(b"\0", stroff + name_off)]
        if name not in (b".debug_info", b".debug_info.dwo"):
            continue
        pos = offset
        while pos + 20 <= offset + size:
            length, version, unit_type = struct.unpack_from("<IHB", data, pos)
            if version == 5 and unit_type in (4, 5):   # skeleton, split
                out[pos + 12:pos + 20] = bytes(8)
            pos += 4 + length
    return bytes(out)

# ---------------------------------------------------------------------------
# Main dispatch


class TestMain(unittest.TestCase):

    def test_version_and_help(self):
        r = run([sys.executable, DISTCC_PY, "--version"])
        self.assertEqual(r.stdout.decode(), "distcc.py %s (protocol %d)\n"
                         % (distcc.VERSION, distcc.PROTOCOL))
        r = run([sys.executable, DISTCC_PY, "--help"])
        self.assertEqual(r.returncode, 0)
        # Every variable is named in --help, the one file a user has.
        with open(DISTCC_PY) as f:
            names = set(re.findall(r"\bENV_\w+ = \"(DISTCC_\w+)\"",
                                   f.read()))
        self.assertGreater(len(names), 10)
        for name in names:
            self.assertIn(name, r.stdout.decode())
        self.assertNotIn("README", r.stdout.decode())

    def test_a_python_too_old_is_one_line(self):
        # An interpreter that says it is 3.7 (and a real old one, where
        # pyenv has one): one line and exit 1, never a SyntaxError.
        tmp = tempfile.mkdtemp(prefix="distccpy-test-")
        self.addCleanup(shutil.rmtree, tmp)
        fake = os.path.join(tmp, "python3.7")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\nshift 2\nexec %s -S -c 'import sys; code = "
                    "sys.argv.pop(1); sys.version_info = (3, 7, 16); "
                    "exec(code)' \"$@\"\n" % sys.executable)
        os.chmod(fake, 0o755)
        pythons = [fake] + glob.glob(os.path.expanduser(
            "~/.pyenv/versions/3.7.*/bin/python3"))[:1]
        for python in pythons:
            r = run([DISTCC_PY, "gcc", "-c", "a.c"], env=dict(
                os.environ, DISTCC_PYTHON=python))
            self.assertEqual((r.returncode, r.stderr.decode()), (1, (
                "distcc.py: Python 3.7 is too old: 3.8 or newer is needed; "
                "set DISTCC_PYTHON\n")), python)

    def test_bad_configuration_is_one_line(self):
        cases = [
            # environment, words, whether the compile goes on here
            ({"DISTCC_HOSTS": "buildbox"}, "distcc.py speaks ssh only", True),
            ({"DISTCC_HOSTS": "@box/zero"}, "'@box/zero'", True),
            ({"DISTCC_SSH": "ssh 'unclosed", "DISTCC_HOSTS": "@box"},
             "DISTCC_SSH", True),
            ({"DISTCC_DIR": "/proc/nowhere", "DISTCC_HOSTS": "@box"},
             "/proc/nowhere", True),
            ({"HOSTS_FILE": b"@box\xff\n"}, "not UTF-8", True),
            ({"DISTCC_RELAY_TIMEOUT": "soon"}, "DISTCC_RELAY_TIMEOUT", False),
        ]
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "x.c"), "w") as f:
                f.write("int x;\n")
            for extra, words, goes_on in cases:
                extra = dict(extra)
                os.makedirs(os.path.join(d, "s"), mode=0o700, exist_ok=True)
                hosts_file = os.path.join(d, "s", "hosts")
                if os.path.exists(hosts_file):
                    os.unlink(hosts_file)
                if "HOSTS_FILE" in extra:
                    with open(hosts_file, "wb") as f:
                        f.write(extra.pop("HOSTS_FILE"))
                for fallback in ("1", "0"):
                    env = env_without_distcc(DISTCC_DIR=os.path.join(d, "s"),
                                             DISTCC_FALLBACK=fallback,
                                             TMPDIR=d)
                    env.update(extra)
                    if os.path.exists(os.path.join(d, "x.o")):
                        os.unlink(os.path.join(d, "x.o"))
                    r = run([sys.executable, DISTCC_PY, "gcc", "-c", "x.c"],
                            env=env, cwd=d)
                    err = r.stderr.decode()
                    here = goes_on and fallback == "1"
                    self.assertEqual(r.returncode, 0 if here else
                                     distcc.EXIT_BAD_ARGUMENTS, (extra, err))
                    self.assertEqual(os.path.exists(os.path.join(d, "x.o")),
                                     here, (extra, err))
                    self.assertEqual(len(err.splitlines()), 1, err)
                    self.assertTrue(err.startswith("distcc.py: "), err)
                    self.assertIn(words, err)
                    if here:
                        self.assertIn("compiling x.c locally", err)

    def test_a_configuration_error_is_said_once_a_build(self):
        # A build's jobs share a login session: the first job warns, the
        # next ones compile here quietly, and another mistake is said.
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "x.c"), "w") as f:
                f.write("int x;\n")
            errs = []
            for hosts in ["@box/zero"] * 3 + ["@box/none"]:
                env = env_without_distcc(DISTCC_DIR=os.path.join(d, "s"),
                                         DISTCC_HOSTS=hosts, TMPDIR=d)
                if os.path.exists(os.path.join(d, "x.o")):
                    os.unlink(os.path.join(d, "x.o"))
                r = run([sys.executable, DISTCC_PY, "gcc", "-c", "x.c"],
                        env=env, cwd=d)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertTrue(os.path.exists(os.path.join(d, "x.o")))
                errs.append(r.stderr.decode())
            self.assertIn("'@box/zero'", errs[0])
            self.assertEqual(errs[1:3], ["", ""])
            self.assertIn("'@box/none'", errs[3])

    def test_an_argument_list_too_long_is_the_compilers_to_report(self):
        # 2.6 MB of options in an @file: gcc itself cannot pass them on to
        # cc1, and says so.  So must we, not "internal error".
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "x.c"), "w") as f:
                f.write("int x = FOO0;\n")
            with open(os.path.join(d, "big.rsp"), "w") as f:
                f.write(" ".join("-DFOO%d=%d" % (i, i)
                                 for i in range(150000)))
            argv = ["gcc", "-c", "x.c", "@big.rsp"]
            local = run(argv, cwd=d)
            self.assertNotEqual(local.returncode, 0)
            env = env_without_distcc(DISTCC_DIR=os.path.join(d, "s"),
                                     DISTCC_HOSTS="@nohost", TMPDIR=d)
            r = run([sys.executable, DISTCC_PY] + argv, env=env, cwd=d)
            self.assertEqual(r.returncode, local.returncode, r.stderr)
            self.assertEqual(r.stderr, local.stderr)
            self.assertFalse(os.path.exists(os.path.join(d, "x.o")))
            # An argv too long for the compiler's own exec gets one line.
            config = distcc.Config(dict(env, DISTCC_HOSTS="localhost"))
            with mock.patch("os.execvp", side_effect=OSError(
                    errno.E2BIG, "Argument list too long")):
                with self.assertRaises(distcc.UsageError) as e:
                    distcc.wrapper_main(["gcc", "-c", "x.c"], config)
            self.assertIn("@file", str(e.exception))

    def test_many_slots_fit_in_a_small_descriptor_limit(self):
        # 17 hosts at /64 is 1,088 slots, which `distcc.py -j` recommends;
        # the wrapper must look at them within `ulimit -n 256`.  The hosts
        # cannot be reached, so each compile ends up here.
        import resource

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "x.c"), "w") as f:
                f.write("int x;\n")
            for hosts in (" ".join("@h%d/64" % i for i in range(17)),
                          "@big/1100"):
                env = env_without_distcc(
                    DISTCC_DIR=os.path.join(d, "s"), DISTCC_HOSTS=hosts,
                    DISTCC_SSH=os.path.join(d, "no-ssh"), TMPDIR=d)
                r = subprocess.run(
                    [sys.executable, DISTCC_PY, "gcc", "-c", "x.c"],
                    env=env, cwd=d, preexec_fn=limit, timeout=60,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                err = r.stderr.decode()
                self.assertEqual(r.returncode, 0, err)
                self.assertNotIn("Too many open files", err)
                self.assertTrue(os.path.exists(os.path.join(d, "x.o")))
                os.unlink(os.path.join(d, "x.o"))
                run([sys.executable, DISTCC_PY, "--stop"], env=env)

    def test_show_hosts_and_j(self):
        with tempfile.TemporaryDirectory() as d:
            env = env_without_distcc(DISTCC_DIR=os.path.join(d, "s"),
                                     DISTCC_HOSTS="localhost/3 @a/5 b@c")
            r = run([sys.executable, DISTCC_PY, "-j"], env=env)
            self.assertEqual(r.stdout.decode(), "%d\n"
                             % (3 + 5 + distcc.DEFAULT_HOST_LIMIT))
            r = run([sys.executable, DISTCC_PY, "--show-hosts"], env=env)
            lines = r.stdout.decode().splitlines()
            self.assertEqual([ln.split()[0] for ln in lines],
                             ["localhost/3", "@a/5", "b@c"])
            self.assertIn("limit 5", lines[1])

    def test_commands_that_lose_their_reader_or_name_localhost(self):
        with tempfile.TemporaryDirectory() as d:
            env = env_without_distcc(DISTCC_DIR=os.path.join(d, "s"))
            # --monitor | head: the reader goes; no traceback, no error.
            p = subprocess.Popen([sys.executable, DISTCC_PY, "--monitor",
                                  "0.05", "200"], env=env,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            p.stdout.readline()
            p.stdout.close()
            err = p.stderr.read()
            p.stderr.close()
            self.assertEqual(p.wait(timeout=TIMEOUT), 0, err)
            self.assertEqual(err, b"")
            r = run([sys.executable, DISTCC_PY, "--check", "localhost"],
                    env=env)
            self.assertEqual(r.returncode, distcc.EXIT_BAD_ARGUMENTS)
            self.assertIn(b"write --check @localhost", r.stderr)
            with open(os.path.join(d, "x.c"), "w") as f:
                f.write("int x;\n")
            r = run([sys.executable, DISTCC_PY, "--explain", "no-such-cc",
                     "-c", "x.c"], env=env, cwd=d)
            self.assertIn(b"compiler no-such-cc not found here", r.stdout)

    def test_stop_signals_only_a_relay_holding_its_lock(self):
        with tempfile.TemporaryDirectory() as d:
            state = os.path.join(d, "s")
            os.mkdir(state, 0o700)
            # A stale lock names a pid that is now somebody else's.
            other = subprocess.Popen([sys.executable, "-c",
                                      "import time; time.sleep(60)"])
            try:
                with open(os.path.join(state, "relay-x-0.lock"), "w") as f:
                    f.write("%d\n" % other.pid)
                with open(os.path.join(state, "backoff-x-0"), "w") as f:
                    f.write("@x\n")
                r = run([sys.executable, DISTCC_PY, "--stop"],
                        env=env_without_distcc(DISTCC_DIR=state))
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout, b"stopped 0 relays\n")
                self.assertIsNone(other.poll(), "an unrelated process died")
                self.assertFalse(os.path.exists(os.path.join(
                    state, "backoff-x-0")), "the backoff stayed")
            finally:
                other.kill()
                other.wait()

    def test_unknown_option_and_missing_compiler(self):
        r = run([sys.executable, DISTCC_PY, "--frobnicate"])
        self.assertEqual(r.returncode, distcc.EXIT_BAD_ARGUMENTS)
        self.assertIn("unknown option --frobnicate", r.stderr.decode())
        r = run([sys.executable, DISTCC_PY, "-O2", "-c", "x.c"])
        self.assertEqual(r.returncode, distcc.EXIT_BAD_ARGUMENTS)
        self.assertIn("name the compiler first (distcc.py gcc -O2 ...)",
                      r.stderr.decode())
        # distcc's "no backoff" is accepted; a negative period is not.
        for value, status in (("0", 0), ("-1", distcc.EXIT_BAD_ARGUMENTS)):
            r = run([sys.executable, DISTCC_PY, "--show-hosts"],
                    env=env_without_distcc(DISTCC_HOSTS="localhost",
                                           DISTCC_BACKOFF_PERIOD=value))
            self.assertEqual(r.returncode, status, r.stderr)
        with tempfile.TemporaryDirectory() as d:
            env = env_without_distcc(DISTCC_DIR=os.path.join(d, "s"))
            r = run([sys.executable, DISTCC_PY, "no-such-cc-1", "-c", "x.c"],
                    env=env, cwd=d)
        self.assertEqual(r.returncode, distcc.EXIT_BAD_ARGUMENTS)
        self.assertRegex(r.stderr.decode(),
                         r"^distcc.py: usage: cannot run no-such-cc-1: .*; "
                         r"is the compiler installed and on PATH\?\n$")

# ---------------------------------------------------------------------------
# Benchmark
#
# `python3 test_distcc.py --bench [-n RUNS] [--sections 1,2,3,4,5,6]` prints
# what distcc.py costs beside local gcc and, when distcc and distccd are
# installed, beside the real distcc in TCP mode (distccd on 127.0.0.1) and
# in ssh mode.  Everything runs on this machine with the test sshd above as
# the build host, so it measures overhead rather than a farm's speed-up:
# (1) wall and client CPU per job for a tiny C file, Brotli's enc/encode.c
# and a C++ file, with distcc.py cold (relay and ssh ControlMaster stopped)
# and with its relay up; (2) make -j8 of Brotli's 31 files; (3) that build
# with make on CPU 0 and sshd and distccd on CPU 1, each host list with a
# localhost slot (jobs still queued on the host when it frees are taken
# back); (4) bytes on the wire per direction against the raw sizes; (5)
# start-up of the wrapper; (6) make -j32 of 256 tiny jobs with a no-op
# compiler on the host, for the relay's load.  It benchmarks a copy of
# distcc.py (sha256 printed), so edits to the working tree cannot change it
# half-way.  Each of RUNS rounds
# runs every mode once, alternating, and the tables give median [min-max].
# Client CPU is that of the command and the descendants it waited for
# (wait4), plus for distcc.py that of its relay, the relay's ssh and the
# ControlMaster (/proc); the server side is not client CPU.  The unit tests
# never run any of this.

BENCH_CFLAGS = ["-O2", "-g"]
BENCH_MAKE_JOBS = 8
BENCH_JOB_TIMEOUT = 300        # seconds one compile may take
BENCH_BUILD_TIMEOUT = 600      # seconds one make of Brotli may take
BENCH_SECTIONS = "123456"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# The standard containers without <regex>: about 2-3 s of g++ -O2 -g.
BENCH_CXX_SOURCE = r"""
#include <algorithm>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>
template <typename K, typename V>
std::map<V, std::vector<K>> invert(const std::map<K, V> &m) {
    std::map<V, std::vector<K>> out;
    for (const auto &kv : m) out[kv.second].push_back(kv.first);
    return out;
}
int main(int argc, char **argv) {
    std::map<std::string, int> counts;
    for (int i = 1; i < argc; ++i) {
        std::istringstream in(argv[i]);
        std::string word;
        while (std::getline(in, word, ',')) counts[word]++;
    }
    std::unordered_map<std::string, std::set<int>> seen;
    for (const auto &kv : counts) seen[kv.first].insert(kv.second);
    auto inv = invert(counts);
    std::vector<std::pair<std::string, int>> v(counts.begin(), counts.end());
    std::sort(v.begin(), v.end(), [](const auto &a, const auto &b) {
        return a.second > b.second; });
    for (const auto &p : v) std::cout << p.first << ' ' << p.second << '\n';
    std::cout << inv.size() << ' ' << seen.size() << std::endl;
}
"""


def kill_group(pid):
    """SIGKILL the process group PID (a command started in its own
    session), if it is still there."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it has ended by itself


def time_command(argv, env, cwd, log, timeout=BENCH_JOB_TIMEOUT):
    """Run ARGV with its output appended to the file LOG; return (wall
    seconds, CPU seconds of it and the descendants it waited for).  Raises
    RuntimeError with the end of LOG when it fails or times out."""
    with open(log, "ab") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=out, start_new_session=True)
        timer = threading.Timer(timeout, kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            kill_group(proc.pid)
            proc.wait(timeout=10)
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        with open(log, "rb") as f:
            tail = f.read()[-1500:].decode(errors="replace")
        raise RuntimeError("%s: %s\n%s" % (
            " ".join(argv), "timed out after %d s" % timeout
            if wall >= timeout else "exit %d" % proc.returncode, tail))
    return wall, usage.ru_utime + usage.ru_stime


def read_process_cpu(pid):
    """Return the CPU seconds that PID and its reaped children used
    (utime + stime + cutime + cstime), or 0.0 when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLOCK_TICKS


def read_busy_ticks():
    """Return the clock ticks all CPUs spent busy so far (/proc/stat: all
    but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def measure_background_load(seconds=1.0):
    """Return how many CPUs were busy while this sleeps SECONDS."""
    before = read_busy_ticks()
    time.sleep(seconds)
    return (read_busy_ticks() - before) / CLOCK_TICKS / seconds


def copy_distcc_py(root):
    """Copy distcc.py into ROOT; return the copy's path and sha256.  A copy
    that does not compile (caught in the middle of an edit) is taken again,
    for up to 30 s."""
    path = os.path.join(root, "distcc.py")
    deadline = time.monotonic() + 30
    while True:
        with open(DISTCC_PY, "rb") as f:
            data = f.read()
        try:
            compile(data, path, "exec")
            break
        except SyntaxError as e:
            if time.monotonic() > deadline:
                raise RuntimeError("distcc.py does not compile: %s" % e)
            time.sleep(1)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755)
    # One run writes its bytecode cache, as any install's first run does;
    # otherwise the first wrappers of the first build each compile it.
    run([path, "--version"], env=env_without_distcc(
        DISTCC_PYTHON=sys.executable))
    return path, hashlib.sha256(data).hexdigest()


def make_distcc_py_env(bench, name, hosts):
    """Return the environment of a distcc.py with its own DISTCC_DIR NAME
    and DISTCC_HOSTS HOSTS; the cleanup stops its relay and master."""
    env = env_without_distcc(
        DISTCC_DIR=os.path.join(bench.root, name), DISTCC_HOSTS=hosts,
        DISTCC_SSH=bench.sshd.ssh_command(), DISTCC_FALLBACK="0", LC_ALL="C",
        DISTCC_PYTHON=sys.executable)
    bench.distcc_py_envs.append(env)
    return env


def make_distcc_env(bench, name, hosts, ssh=False):
    """Return the environment of the real distcc with its own DISTCC_DIR
    NAME, DISTCC_HOSTS HOSTS and, for SSH, the test sshd's client config."""
    env = env_without_distcc(
        DISTCC_DIR=os.path.join(bench.root, name), DISTCC_HOSTS=hosts,
        DISTCC_FALLBACK="0", LC_ALL="C")
    os.makedirs(env["DISTCC_DIR"], exist_ok=True)
    if ssh:
        env["DISTCC_SSH"] = bench.ssh_script
    return env


def find_side_pids(bench, env):
    """Return the pids of the relays of the distcc.py environment ENV,
    their children (ssh) and its ssh ControlMaster."""
    pids = set()
    directory = env["DISTCC_DIR"]
    names = os.listdir(directory) if os.path.isdir(directory) else []
    for name in names:
        if name.startswith("relay-") and name.endswith(".lock"):
            try:
                with open(os.path.join(directory, name)) as f:
                    pid = int((f.read().split() or ["0"])[0])
            except (OSError, ValueError):
                continue
            if pid > 0 and process_alive(pid):
                pids.add(pid)
                pids.update(child_pids(pid))
    if names:
        r = run(["ssh", "-F", bench.sshd.config, "-o",
                 "ControlPath=%s/cm-%%C" % directory, "-O", "check",
                 "distcc-test"], timeout=30)
        m = re.search(rb"pid=(\d+)", r.stderr)
        if m:
            pids.add(int(m.group(1)))
    return pids


def read_side_cpu(bench, env):
    """Return {pid: CPU seconds} of find_side_pids(ENV)."""
    return {pid: read_process_cpu(pid) for pid in find_side_pids(bench, env)}


def stop_distcc_py(bench, env):
    """Stop the relays and the ControlMaster of the distcc.py environment
    ENV (distcc.py --stop, ssh -O exit) and reap them."""
    pids = find_side_pids(bench, env)
    if pids:
        run([sys.executable, bench.py, "--stop"], env=env, timeout=30)
        run(["ssh", "-F", bench.sshd.config, "-o",
             "ControlPath=%s/cm-%%C" % env["DISTCC_DIR"], "-O", "exit",
             "distcc-test"], timeout=30)
    for pid in pids:
        end_process(pid)


def start_distccd(bench, cpu=None):
    """Start distccd on a free loopback port (on CPU only, if given);
    return the port.  The cleanup stops it."""
    port = free_port()
    argv = ["distccd", "--daemon", "--no-detach", "--listen", "127.0.0.1",
            "--port", str(port), "--allow", "127.0.0.1", "--log-stderr",
            "--log-level", "warning"]
    if os.getuid() == 0:
        argv += ["--user", "nobody"]      # distccd will not compile as root
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    with open(bench.log, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
    bench.distccds.append(proc)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError("distccd exited with %d" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("distccd did not listen within 10 s")
            time.sleep(0.05)


def stop_distccd(proc):
    """Stop distccd PROC and its workers, by pid."""
    workers = child_pids(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for pid in workers:
        end_process(pid)


def list_brotli_sources(brotli):
    """Return the paths of Brotli's library sources, relative to BROTLI."""
    return ["%s/%s" % (sub, name) for sub in ("common", "dec", "enc")
            for name in sorted(os.listdir(os.path.join(brotli, sub)))
            if name.endswith(".c")]


def write_brotli_makefile(bench):
    """Write a Makefile with one rule per Brotli source into the benchmark
    directory (objects mirror the source tree); return its path."""
    path = os.path.join(bench.root, "Makefile")
    objects = [src[:-2] + ".o" for src in bench.brotli_sources]
    with open(path, "w") as f:
        f.write("all: %s\n" % " ".join(objects))
        for src, obj in zip(bench.brotli_sources, objects):
            f.write("%s: %s/%s\n\t@mkdir -p %s\n"
                    "\t$(CC) $(CFLAGS) -I%s/include -c $< -o $@\n"
                    % (obj, bench.brotli, src, os.path.dirname(obj),
                       bench.brotli))
    return path


def build_brotli(bench, cc, env, distcc_py=False, cpu=None):
    """Make Brotli from clean with CC in ENV (make and all it runs on CPU
    only, if given); return (wall, client CPU, object directory).  For
    DISTCC_PY the relay starts afresh and its CPU is added."""
    objdir = tempfile.mkdtemp(dir=bench.root, prefix="obj-")
    argv = ["make", "-s", "-f", bench.makefile, "-j%d" % BENCH_MAKE_JOBS,
            "CC=" + cc, "CFLAGS=" + " ".join(BENCH_CFLAGS)]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    if distcc_py:
        stop_distcc_py(bench, env)
    wall, cpu_time = time_command(argv, env, objdir, bench.log,
                                  BENCH_BUILD_TIMEOUT)
    if distcc_py:
        cpu_time += sum(read_side_cpu(bench, env).values())
    built = sum(name.endswith(".o") for _, _, names in os.walk(objdir)
                for name in names)
    if built != len(bench.brotli_sources):
        raise RuntimeError("%s built %d objects of %d" % (
            cc, built, len(bench.brotli_sources)))
    return wall, cpu_time, objdir


def rotated(modes, i):
    """MODES in the order of round I: each round starts one further on, so
    that no mode always follows the same one (a compile can leave the
    next one hot caches, or a busy sshd)."""
    i %= len(modes)
    return modes[i:] + modes[:i]


def format_range(values, scale=1e3, digits=0):
    """Return 'median [min-max]' of VALUES times SCALE."""
    import statistics
    v = [x * scale for x in values]
    return "%7.*f [%5.*f-%5.*f]" % (digits, statistics.median(v), digits,
                                    min(v), digits, max(v))


def format_ratio(numerator, denominator):
    """Return NUMERATOR/DENOMINATOR as '1.23x', or 'n/a' below 1 ms."""
    if denominator is None or numerator is None or denominator < 1e-3:
        return "n/a"
    return "%.2fx" % (numerator / denominator)


# The machines are shared and noisy: the bars that hinge on a few percent
# get more rounds than -n.
BENCH_TINY_ROUNDS = 4                # times -n, for the tiny file
BENCH_LARGE_ROUNDS = 4               # times -n, for the large files
BENCH_PINNED_ROUNDS = 2              # times -n, for section 3


def measure_per_job(bench):
    """Section 1: wall and client CPU of single compiles, every mode in
    turn in each round."""
    import statistics
    src = os.path.join(bench.root, "src")
    os.makedirs(src)
    for name, text in (("tiny.c", C_SOURCE), ("local.h", LOCAL_H),
                       ("light.cc", CXX_LIGHT_SOURCE),
                       ("heavy.cc", BENCH_CXX_SOURCE)):
        with open(os.path.join(src, name), "w") as f:
            f.write(text)
    files = [("tiny.c", "gcc", "tiny.c", []),
             ("encode.c", "gcc", os.path.join(bench.brotli, "enc/encode.c"),
              ["-I" + os.path.join(bench.brotli, "include")]),
             ("heavy.cc", "g++", "heavy.cc", [])]
    host = "@distcc-test:" + bench.py
    cold = make_distcc_py_env(bench, "dpy-cold", host)
    up = make_distcc_py_env(bench, "dpy-up", host)
    wrapper = [bench.py]            # as a build runs it: its sh launcher
    modes = [("local gcc", [], bench.env),
             ("distcc.py cold", wrapper, cold),
             ("distcc.py relay up", wrapper, up)]
    if bench.have_distcc:
        port = start_distccd(bench)
        modes += [("distcc TCP", ["distcc"], make_distcc_env(
            bench, "dcc-tcp", "127.0.0.1:%d" % port)),
                  ("distcc ssh", ["distcc"], make_distcc_env(
                      bench, "dcc-ssh", "@distcc-test", ssh=True))]
    print("\n== 1. Per job, %s, %d rounds: median [min-max], ms ==" % (
        " ".join(BENCH_CFLAGS), bench.runs * BENCH_LARGE_ROUNDS))
    print("%-9s %-18s %-21s %7s  %-21s %9s" % (
        "file", "mode", "wall", "+wall", "client CPU", "background"))
    for compiler, path in (("gcc", "tiny.c"), ("g++", "light.cc")):
        time_command(wrapper + [compiler, "-c", path, "-o", "out.o"], up,
                     src, bench.log)      # the relay starts, knows both
    for label, compiler, path, flags in files:
        argv = [compiler] + BENCH_CFLAGS + flags + ["-c", path, "-o", "out.o"]
        # A tiny job's extra time is a few ms in a noisy 50, a large one's
        # a few percent of a compile that varies by 20%: more rounds.
        rounds = bench.runs * (BENCH_TINY_ROUNDS if label == "tiny.c" else
                               BENCH_LARGE_ROUNDS)
        up_before = read_side_cpu(bench, up)
        walls = {mode: [] for mode, _, _ in modes}
        cpus = {mode: [] for mode, _, _ in modes}
        side = {mode: [0.0] * rounds for mode, _, _ in modes}
        side["distcc.py cold"] = []
        for i in range(rounds):
            for mode, prefix, env in rotated(modes, i):
                if env is cold:
                    stop_distcc_py(bench, cold)
                wall, cpu = time_command(prefix + argv, env, src, bench.log)
                if env is cold:
                    # The relay and ControlMaster this job started.
                    side[mode].append(sum(read_side_cpu(bench, cold).values()))
                walls[mode].append(wall)
                cpus[mode].append(cpu)
        stop_distcc_py(bench, cold)
        # /proc counts 10 ms ticks, too coarse for one job with the relay
        # up: share the relay's CPU out evenly over the rounds.
        share = sum(cpu - up_before.get(pid, 0.0) for pid, cpu in
                    read_side_cpu(bench, up).items()) / rounds
        side["distcc.py relay up"] = [share] * rounds
        for mode, _, _ in modes:
            total = [c + s for c, s in zip(cpus[mode], side[mode])]
            # Paired: each round against the local compile of that round,
            # so that the machine's drift between rounds cancels out.
            extra = statistics.median(
                w - base for w, base in zip(walls[mode], walls["local gcc"]))
            bench.results["job", label, mode] = (
                statistics.median(walls[mode]), extra)
            print("%-9s %-18s %s %+7.0f  %s %9.0f" % (
                label, mode, format_range(walls[mode]), extra * 1e3,
                format_range(total), statistics.median(side[mode]) * 1e3))
    print("(+wall: median over the rounds of the wall minus local gcc's "
          "in the same round; tiny.c: %d rounds; cold: relay and ssh "
          "ControlMaster stopped before each job; relay up: both already "
          "running; client CPU: the wrapper and all it waited for, plus "
          "background: CPU of distcc.py's relay, its ssh and the "
          "ControlMaster, for relay up shared out over the rounds)"
          % (bench.runs * BENCH_TINY_ROUNDS))


def measure_builds(bench):
    """Section 2: make -j8 of Brotli, every mode in turn in each round.
    The distcc.py builds trace (DISTCC_VERBOSE) for section 4."""
    import statistics
    dpy = make_distcc_py_env(bench, "dpy-build", "@distcc-test/%d:%s" % (
        BENCH_MAKE_JOBS, bench.py))
    traced = dict(dpy, DISTCC_VERBOSE="1",
                  DISTCC_LOG=os.path.join(bench.root, "trace.log"))
    modes = [("local gcc", "gcc", bench.env),
             ("distcc.py", "%s gcc" % bench.py, traced)]
    if bench.have_distcc:
        port = start_distccd(bench)
        modes += [("distcc TCP", "distcc gcc", make_distcc_env(
            bench, "dcc-btcp", "127.0.0.1:%d/%d" % (port, BENCH_MAKE_JOBS))),
                  ("distcc ssh", "distcc gcc", make_distcc_env(
                      bench, "dcc-bssh", "@distcc-test/%d" % BENCH_MAKE_JOBS,
                      ssh=True))]
    results = {mode: [] for mode, _, _ in modes}
    for i in range(bench.runs):
        for mode, cc, env in rotated(modes, i):
            if env is traced and os.path.exists(traced["DISTCC_LOG"]):
                os.remove(traced["DISTCC_LOG"])
            wall, cpu, objdir = build_brotli(bench, cc, env, env is traced)
            results[mode].append((wall, cpu))
            if env is traced:
                if bench.traced:
                    shutil.rmtree(bench.traced[1], ignore_errors=True)
                bench.traced = (traced["DISTCC_LOG"], objdir)
            else:
                shutil.rmtree(objdir, ignore_errors=True)
    stop_distcc_py(bench, dpy)
    print("\n== 2. Brotli, %d files, make -j%d, %s, %d rounds: median "
          "[min-max], s ==" % (len(bench.brotli_sources), BENCH_MAKE_JOBS,
                               " ".join(BENCH_CFLAGS), bench.runs))
    print("%-11s %-21s %-21s" % ("mode", "wall", "client CPU"))
    for mode, _, _ in modes:
        walls, cpus = zip(*results[mode])
        bench.results["build", mode] = statistics.median(cpus)
        print("%-11s %s %s" % (mode, format_range(walls, 1, 2),
                               format_range(cpus, 1, 2)))
    print("(client CPU: make and all it waited for, plus distcc.py's relay, "
          "its ssh and the ControlMaster; distccd and sshd are not in it)")


def measure_pinned(bench):
    """Section 3: make -j8 on CPU 0 with sshd and distccd on CPU 1; local
    against distributed with one localhost slot."""
    import statistics
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        print("\n== 3. Pinned: skipped, needs 2 CPUs and taskset ==")
        return
    sshd_pid = bench.sshd.proc.pid
    affinity = os.sched_getaffinity(sshd_pid)
    os.sched_setaffinity(sshd_pid, {1})   # new sessions inherit it
    try:
        slots = "localhost/%d" % bench.pinned_local
        dpy_hosts = "%s @distcc-test/2:%s" % (slots, bench.py)
        dpy = make_distcc_py_env(bench, "dpy-pin", dpy_hosts)
        modes = [("local gcc", "gcc", bench.env),
                 ("distcc.py", "%s gcc" % bench.py, dpy)]
        if bench.have_distcc:
            tcp_hosts = "%s 127.0.0.1:%d/2" % (slots,
                                                start_distccd(bench, 1))
            modes.append(("distcc TCP", "distcc gcc", make_distcc_env(
                bench, "dcc-ptcp", tcp_hosts)))
        walls = {mode: [] for mode, _, _ in modes}
        busy = {mode: [] for mode, _, _ in modes}
        rounds = bench.runs * BENCH_PINNED_ROUNDS
        for i in range(rounds):
            for mode, cc, env in rotated(modes, i):
                before = read_cpu_busy()
                wall, _, objdir = build_brotli(bench, cc, env, env is dpy, 0)
                busy[mode].append([b - a for a, b in zip(before,
                                                         read_cpu_busy())])
                walls[mode].append(wall)
                shutil.rmtree(objdir, ignore_errors=True)
        stop_distcc_py(bench, dpy)
    finally:
        os.sched_setaffinity(sshd_pid, affinity)
    local = statistics.median(walls["local gcc"])
    print("\n== 3. Pinned: make -j%d on CPU 0, sshd and distccd on CPU 1, "
          "%d rounds: median [min-max], s ==" % (BENCH_MAKE_JOBS, rounds))
    print("hosts: distcc.py '%s', distcc 'localhost/%d 127.0.0.1:PORT/2'"
          % (dpy_hosts.replace(bench.py, "PATH"), bench.pinned_local))
    print("%-11s %-21s %-17s %s" % ("mode", "wall", "local/distributed",
                                    "busy CPU 0, CPU 1"))
    for mode, _, _ in modes:
        speed_up = local / statistics.median(walls[mode])
        bench.results["pinned", mode] = speed_up
        print("%-11s %s %6.2fx           %s" % (
            mode, format_range(walls[mode], 1, 2), speed_up,
            ", ".join("%.1f" % statistics.median(cpu)
                      for cpu in list(zip(*busy[mode]))[:2])))
    print("(busy: seconds each CPU was not idle during the build, from "
          "/proc/stat; anything else running counts too)")
    records, _ = distcc.read_stats(dpy["DISTCC_DIR"])
    where = {}
    for rec in records:
        key = "taken back" if rec["reason"].startswith("taken back") \
            else rec["outcome"]
        where[key] = where.get(key, 0) + 1
    print("distcc.py's jobs, per build: %s" % ", ".join(
        "%.1f %s" % (n / rounds, key) for key, n in sorted(where.items())))


def read_cpu_busy():
    """Return the seconds each CPU has spent not idle, from /proc/stat
    (an empty list where there is none)."""
    busy = []
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *ticks = line.split()
                if name.startswith("cpu") and name != "cpu":
                    ticks = [int(t) for t in ticks[:8]]
                    busy.append((sum(ticks) - ticks[3] - ticks[4])
                                / os.sysconf("SC_CLK_TCK"))
    except OSError:
        pass  # no /proc/stat (not Linux): no figures
    return busy


def measure_bytes(bench):
    """Section 4: bytes on the wire per direction against the raw sizes,
    from a traced distcc.py build of Brotli (section 2's last, if run)."""
    if bench.traced is None:
        env = dict(make_distcc_py_env(bench, "dpy-bytes", "@distcc-test/%d:%s"
                                      % (BENCH_MAKE_JOBS, bench.py)),
                   DISTCC_VERBOSE="1",
                   DISTCC_LOG=os.path.join(bench.root, "trace.log"))
        _, _, objdir = build_brotli(bench, "%s gcc" % bench.py, env, True)
        stop_distcc_py(bench, env)
        bench.traced = (env["DISTCC_LOG"], objdir)
    log, objdir = bench.traced
    with open(log, errors="replace") as f:
        sends = re.findall(r"send \S+ to \S+: (\d+) bytes, (\d+) compressed",
                           f.read())
    text = sum(int(raw) for raw, _ in sends)
    sent = sum(int(wire) for _, wire in sends)
    objects = packed = 0
    for directory, _, names in os.walk(objdir):
        for name in names:
            if name.endswith(".o"):
                with open(os.path.join(directory, name), "rb") as f:
                    data = f.read()
                objects += len(data)
                packed += len(zlib.compress(data, 1))
    full = 0
    for src in bench.brotli_sources:
        r = run(["gcc"] + BENCH_CFLAGS + ["-I" + os.path.join(
            bench.brotli, "include"), "-E", os.path.join(bench.brotli, src)])
        full += len(r.stdout)
    print("\n== 4. Bytes on the wire, Brotli, %d jobs sent ==" % len(sends))
    print("up    distcc.py: -fdirectives-only text %9d B, sent %9d B (%.1fx; "
          "zlib-1 of text and source)" % (text, sent, text / max(sent, 1)))
    print("up    distcc: gcc -E text               %9d B, sent as is" % full)
    print("down  objects (-g)                      %9d B, zlib-1 %7d B "
          "(%.1fx; distcc sends them as is)" % (objects, packed,
                                                objects / max(packed, 1)))


def measure_startup(bench):
    """Section 5: what starting the wrapper costs, against python3 itself
    and gcc on the tiny file, alternating."""
    src = os.path.join(bench.root, "start")
    os.makedirs(src)
    for name, text in (("tiny.c", C_SOURCE), ("local.h", LOCAL_H)):
        with open(os.path.join(src, name), "w") as f:
            f.write(text)
    cases = [("python3 -c pass", [sys.executable, "-c", "pass"]),
             ("distcc.py --version", [bench.py, "--version"]),
             ("gcc -c tiny.c", ["gcc", "-c", "tiny.c", "-o", "tiny.o"])]
    rounds = 5 * bench.runs
    times = {label: [] for label, _ in cases}
    for _ in range(rounds):
        for label, argv in cases:
            times[label].append(time_command(argv, bench.env, src, bench.log))
    print("\n== 5. Start-up, %d rounds: median [min-max], ms ==" % rounds)
    print("%-20s %-21s %-21s" % ("command", "wall", "CPU"))
    for label, _ in cases:
        walls, cpus = zip(*times[label])
        print("%-20s %s %s" % (label, format_range(walls, 1e3, 1),
                               format_range(cpus, 1e3, 1)))


RELAY_LOAD_JOBS = 256
RELAY_LOAD_MAKE_JOBS = 32


def measure_relay_load(bench):
    """Section 6: make -j32 of many tiny jobs whose compiler on the host
    returns at once, so that only distcc.py's own path limits the rate:
    jobs per second, and how busy the relay is (a relay near one core
    would be the build's bottleneck)."""
    import statistics
    root = os.path.join(bench.root, "relay-load")
    os.makedirs(os.path.join(root, "bin"))
    with open(os.path.join(root, "bin", "gcc"), "w") as f:
        # gcc -v from the real gcc (the identity check); a compile just
        # creates its -o file.
        f.write('#!/bin/sh\ncase " $* " in *" -v "*) exec %s "$@";; esac\n'
                'prev=\nfor a; do [ "$prev" = -o ] && : > "$a"; prev=$a; '
                'done\nexit 0\n' % shutil.which("gcc"))
    script = os.path.join(root, "host.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nPATH=%s:$PATH\nexport PATH\nexec %s %s -i\n"
                % (os.path.join(root, "bin"), sys.executable, bench.py))
    for path in (script, os.path.join(root, "bin", "gcc")):
        os.chmod(path, 0o755)
    with open(os.path.join(root, "tiny.c"), "w") as f:
        f.write(C_SOURCE)
    with open(os.path.join(root, "local.h"), "w") as f:
        f.write(LOCAL_H)
    objects = ["o/%d.o" % i for i in range(RELAY_LOAD_JOBS)]
    with open(os.path.join(root, "Makefile"), "w") as f:
        f.write("all: %s\no/%%.o: tiny.c\n\t@mkdir -p o\n"
                "\t$(CC) -O2 -c tiny.c -o $@\n" % " ".join(objects))
    env = make_distcc_py_env(bench, "dpy-load", "@distcc-test/%d:%s" % (
        2 * RELAY_LOAD_MAKE_JOBS, script))
    cc = "CC=%s gcc" % bench.py
    time_command([bench.py, "gcc", "-c", "tiny.c", "-o", "first.o"], env,
                 root, bench.log)           # the relay starts
    walls, cpus, relay = [], [], []
    for _ in range(bench.runs):
        shutil.rmtree(os.path.join(root, "o"), ignore_errors=True)
        before = read_side_cpu(bench, env)
        wall, cpu = time_command(["make", "-s", "-j%d" % RELAY_LOAD_MAKE_JOBS,
                                  cc], env, root, bench.log)
        after = read_side_cpu(bench, env)
        used = {pid: c - before.get(pid, 0.0) for pid, c in after.items()}
        walls.append(wall)
        cpus.append(cpu / RELAY_LOAD_JOBS)
        relay.append(sum(used.values()))
    stop_distcc_py(bench, env)
    print("\n== 6. Relay load: make -j%d of %d tiny jobs, the host's "
          "compiler a no-op, %d rounds: median [min-max] ==" % (
              RELAY_LOAD_MAKE_JOBS, RELAY_LOAD_JOBS, bench.runs))
    print("wall %s s, %.0f jobs/s; CPU per job of make and all it waited "
          "for (wrapper, cpp) %s ms" % (
              format_range(walls, 1, 2),
              RELAY_LOAD_JOBS / statistics.median(walls),
              format_range(cpus, 1e3, 1)))
    busy = [r / w for r, w in zip(relay, walls)]
    print("relay, its ssh and the ControlMaster: %.1f ms of CPU per job, "
          "busy %.0f%% of one core" % (
              statistics.median(relay) / RELAY_LOAD_JOBS * 1e3,
              statistics.median(busy) * 100))


# The issue's bars, which print_summary checks.
BAR_TINY_EXTRA_VS_TCP = 1.8     # tiny.c extra wall, relay up: at most x TCP
BAR_BUILD_CPU_VS_TCP = 1.6      # make -j8 client CPU: at most x distcc TCP
BAR_BUILD_CPU_VS_SSH = 0.5      # make -j8 client CPU: under x distcc ssh
BAR_PINNED_SPEED_UP = 1.7       # pinned speed-up: at least
BAR_PINNED_VS_TCP = 0.95        # pinned speed-up: at least x distcc TCP's
BAR_ENCODE_EXTRA = 0.05         # encode.c extra wall: within this of local


def ratio(numerator, denominator):
    """Return NUMERATOR/DENOMINATOR, or None below 1 ms (as
    format_ratio)."""
    if denominator is None or numerator is None or denominator < 1e-3:
        return None
    return numerator / denominator


def verdict(value, at_most=None, under=None, at_least=None):
    """Return 'met' or 'missed' for VALUE against its bar, or 'n/a' when
    VALUE is None."""
    if value is None:
        return "n/a"
    ok = ((at_most is None or value <= at_most) and
          (under is None or value < under) and
          (at_least is None or value >= at_least))
    return "met" if ok else "missed"


def print_summary(bench):
    """Print the ratios the issue's bars are about, from the sections run,
    each with its bar."""
    r = bench.results
    lines = []
    if ("job", "tiny.c", "distcc TCP") in r:
        dpy = r["job", "tiny.c", "distcc.py relay up"][1]
        tcp = r["job", "tiny.c", "distcc TCP"][1]
        lines.append("tiny.c extra wall per job: distcc.py relay up %+.0f ms,"
                     " distcc TCP %+.0f ms: %s (bar: at most %.1fx; %s)" % (
                         dpy * 1e3, tcp * 1e3, format_ratio(dpy, tcp),
                         BAR_TINY_EXTRA_VS_TCP,
                         verdict(ratio(dpy, tcp),
                                 at_most=BAR_TINY_EXTRA_VS_TCP)))
    if ("build", "distcc TCP") in r:
        dpy = r["build", "distcc.py"]
        tcp = r["build", "distcc TCP"]
        ssh = r["build", "distcc ssh"]
        lines.append("make -j%d client CPU: distcc.py %.2f s = %s distcc TCP"
                     " (%.2f s; bar: at most %.1fx; %s), %s distcc ssh "
                     "(%.2f s; bar: under %.1fx; %s)" % (
                         BENCH_MAKE_JOBS, dpy,
                         format_ratio(dpy, tcp), tcp, BAR_BUILD_CPU_VS_TCP,
                         verdict(ratio(dpy, tcp),
                                 at_most=BAR_BUILD_CPU_VS_TCP),
                         format_ratio(dpy, ssh), ssh, BAR_BUILD_CPU_VS_SSH,
                         verdict(ratio(dpy, ssh),
                                 under=BAR_BUILD_CPU_VS_SSH)))
    if ("pinned", "distcc.py") in r:
        dpy = r["pinned", "distcc.py"]
        tcp = r.get(("pinned", "distcc TCP"))
        lines.append("pinned speed-up (local/distributed): distcc.py %.2fx "
                     "(bar: at least %.1fx; %s), distcc TCP %s: %s (bar: at "
                     "least %.2fx; %s)" % (
                         dpy, BAR_PINNED_SPEED_UP,
                         verdict(dpy, at_least=BAR_PINNED_SPEED_UP),
                         "n/a" if tcp is None else "%.2fx" % tcp,
                         format_ratio(dpy, tcp), BAR_PINNED_VS_TCP,
                         verdict(ratio(dpy, tcp),
                                 at_least=BAR_PINNED_VS_TCP)))
    if ("job", "encode.c", "distcc.py relay up") in r:
        local = r["job", "encode.c", "local gcc"][0]
        extra = r["job", "encode.c", "distcc.py relay up"][1]
        lines.append("encode.c extra wall, distcc.py relay up: %+.0f ms = "
                     "%+.1f%% of local %.0f ms (bar: within %.0f%%; %s)" % (
                         extra * 1e3, 100 * extra / local, local * 1e3,
                         100 * BAR_ENCODE_EXTRA,
                         verdict(extra / local, at_most=BAR_ENCODE_EXTRA)))
    if lines:
        print("\n== Summary ==")
        print("\n".join(lines))


def abort_benchmark(message):
    """Stand in for TestCase.fail and skipTest in fetch_brotli: stop."""
    raise RuntimeError(message)


def clean_up_benchmark(bench):
    """Stop every process the benchmark started, by pid, and remove its
    files."""
    for env in bench.distcc_py_envs:
        try:
            stop_distcc_py(bench, env)
        except (OSError, subprocess.SubprocessError) as e:
            print("bench: cleanup: %s" % e, file=sys.stderr)
    for proc in bench.distccds:
        stop_distccd(proc)
    if bench.sshd.proc is not None:
        for pid in child_pids(bench.sshd.proc.pid):
            end_process(pid)
    bench.sshd.stop()
    for pid in child_pids(os.getpid()):
        end_process(pid)
    shutil.rmtree(bench.root, ignore_errors=True)


def run_benchmark(argv):
    """Run the benchmark with options ARGV (after --bench); return the exit
    status."""
    import argparse
    import types
    parser = argparse.ArgumentParser(
        prog="test_distcc.py --bench",
        description="Benchmark distcc.py against local gcc and distcc.")
    parser.add_argument("-n", "--runs", type=int, default=3,
                        help="rounds of every measurement (default 3)")
    parser.add_argument("--sections", default="1,2,3,4,5,6",
                        help="which sections to run, e.g. 1,2,3")
    parser.add_argument("--pinned-local", type=int, default=1, metavar="N",
                        help="localhost slots in section 3's host lists "
                        "(default 1)")
    args = parser.parse_args(argv)
    sections = args.sections.replace(",", "")
    if not sections or set(sections) - set(BENCH_SECTIONS):
        parser.error("--sections takes numbers from 1 to 6, e.g. 1,2,3")
    if args.runs < 1:
        parser.error("-n needs at least 1")
    missing = [tool for tool in ("gcc", "g++", "make", "ssh")
               if not shutil.which(tool)]
    if missing:
        print("bench: not installed: %s" % " ".join(missing), file=sys.stderr)
        return 1
    sys.stdout.reconfigure(line_buffering=True)
    started = time.monotonic()
    become_subreaper()
    bench = types.SimpleNamespace(
        runs=args.runs, pinned_local=args.pinned_local, sshd=SshServer(),
        distcc_py_envs=[], distccds=[],
        results={}, traced=None,
        env=env_without_distcc(LC_ALL="C", DISTCC_PYTHON=sys.executable),
        root=tempfile.mkdtemp(prefix="distccpy-bench-"),
        have_distcc=bool(shutil.which("distcc") and shutil.which("distccd")))
    bench.log = os.path.join(bench.root, "commands.log")
    try:
        bench.py, digest = copy_distcc_py(bench.root)
        bench.brotli = fetch_brotli(types.SimpleNamespace(
            fail=abort_benchmark, skipTest=abort_benchmark))
        bench.brotli_sources = list_brotli_sources(bench.brotli)
        bench.makefile = write_brotli_makefile(bench)
        bench.ssh_script = os.path.join(bench.root, "ssh")
        with open(bench.ssh_script, "w") as f:
            f.write('#!/bin/sh\nexec ssh -F %s "$@"\n' % bench.sshd.config)
        os.chmod(bench.ssh_script, 0o755)
        bench.sshd.start()
        gcc = run(["gcc", "--version"]).stdout.decode().splitlines()[0]
        print("distcc.py benchmark: %d rounds, %d CPUs, %s, %s" % (
            bench.runs, os.cpu_count(), gcc, "distcc %s" % run(
                ["distcc", "--version"]).stdout.split()[1].decode()
            if bench.have_distcc else "no distcc (its modes left out)"))
        print("distcc.py copy, sha256 %s" % digest)
        load_before = measure_background_load()
        print("busy CPUs before: %.2f" % load_before)
        for number, measure in (("1", measure_per_job), ("2", measure_builds),
                                ("3", measure_pinned), ("4", measure_bytes),
                                ("5", measure_startup),
                                ("6", measure_relay_load)):
            if number in sections:
                measure(bench)
        print_summary(bench)
        load = measure_background_load()
        print("\nbusy CPUs after: %.2f; total %.0f s%s" % (
            load, time.monotonic() - started, "; other load was running, "
            "so the numbers are noisy" if max(load, load_before) > 0.3
            else ""))
        return 0
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print("bench: %s" % e, file=sys.stderr)
        return 1
    finally:
        clean_up_benchmark(bench)

# ---------------------------------------------------------------------------
# Runner: unittest, with a closing line that counts


class CountingResult(unittest.TextTestResult):
    """Counts passed tests (subtests pass or fail with their test) and
    times them: the suite must stay under 5 minutes on 2 cores."""

    durations = []

    def startTest(self, test):
        self.started = time.monotonic()
        unittest.TextTestResult.startTest(self, test)

    def stopTest(self, test):
        unittest.TextTestResult.stopTest(self, test)
        self.durations.append((time.monotonic() - self.started, test.id()))


def main():
    if "--bench" in sys.argv[1:]:
        return run_benchmark([a for a in sys.argv[1:] if a != "--bench"])
    suite = unittest.defaultTestLoader.loadTestsFromModule(
        sys.modules[__name__]) if len(sys.argv) < 2 else \
        unittest.defaultTestLoader.loadTestsFromNames(
            sys.argv[1:], sys.modules[__name__])
    runner = unittest.TextTestRunner(verbosity=2, resultclass=CountingResult)
    result = runner.run(suite)
    failed_ids = {getattr(test, "test_case", test).id()
                  for test, _ in result.failures + result.errors}
    failed = len(failed_ids) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    slowest = sorted(CountingResult.durations, reverse=True)[:8]
    print("slowest: " + ", ".join("%s %.1fs" % (name.split(".", 1)[1], t)
                                  for t, name in slowest))
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
