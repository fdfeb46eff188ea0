#!/bin/sh
# Run by sh: Python on this file's cached bytecode (compiling 3,000 lines per
# job costs more than its I/O), -S (nothing needs site-packages, whose .pth
# files can cost 70 ms), no cyclic GC (the long-lived roles turn it back on)
# and the loader already imported (importlib.machinery costs 1 ms).
'''':
exec "${DISTCC_PYTHON:-python3}" -S -c 'import gc, sys; sys.version_info >= (3, 8) or sys.exit("distcc.py: Python %d.%d is too old: 3.8 or newer is needed; set DISTCC_PYTHON" % sys.version_info[:2]); gc.disable(); import _frozen_importlib_external as fl, os; p = os.path.realpath(sys.argv[1]); sys.pycache_prefix = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distcc.py"); sys.dont_write_bytecode = False; m = type(sys)("distcc"); m.__file__ = p; sys.modules["distcc"] = m; fl.SourceFileLoader("distcc", p).exec_module(m); m.launch(sys.argv[2:], sys.argv[1])' "$0" "$@" # '''
__doc__ = """distcc.py: distribute C and C++ compiles over ssh, in one file.

One program, three roles, chosen by argv:

    wrapper  distcc.py gcc -c foo.c -o foo.o: what the build runs
    relay    distcc.py --relay, one per host, started by a wrapper: multiplexes
             the jobs from a Unix socket in $DISTCC_DIR over one ssh session
    server   distcc.py -i, run on the build host by ssh: many jobs over stdio

One job's path:

    wrapper: scan argv -> take a slot of a host -> preprocess here (gcc -E
             -fdirectives-only, which also writes any .d) -> zlib -> JOB
    relay:   -> the same job, renumbered, over the host's ssh session
    server:  -> check it, build the compiler's command itself, compile in a
             private temp dir when a CPU is free -> zlib the object -> RESULT
    wrapper: -> write the object to a temp name beside the target, rename
             it into place, print the compiler's output, exit with its status

Any fault on the way (ssh, the relay, the host) compiles locally, unless
DISTCC_FALLBACK=0; a compile error on the host is the answer, not a fault.
A job still queued on its host is taken back when a localhost slot frees.

The server speaks first: a banner "DISTCC.PY <protocol> <version> cpus=<n>
sandbox=<bwrap or none>", found past any shell noise; then frames (big-endian):

    offset size field
    0      2    magic b"DP"
    2      1    type: JOB, RESULT, ERROR, QUERY, IDENTITY, PROGRESS, CANCEL
    3      1    flags (zero)
    4      4    job id (the relay numbers its jobs; wrappers send 0)
    8      4    body length, at most MAX_FRAME
    12     ...  body

A JOB, RESULT, QUERY or IDENTITY body is a 4-byte length, a metadata object and
the blobs whose sizes it lists.  ERROR: an object with "kind" ("transport",
"protocol" or "rejected") and "message".  PROGRESS: "state" ("queue": waiting
for a CPU, or "compile") and "cpu", its compiler's CPU seconds; sent as a job
queues, starts, and every few seconds while it runs.  CANCEL (empty): nobody
waits for the job; the server drops it or kills its compiler, unanswered.

Environment:

    DISTCC_HOSTS          host list: @host, user@host, /LIMIT, :COMMAND,
                          localhost (default: $DISTCC_DIR/hosts)
    DISTCC_DIR            state directory (default ~/.distcc)
    DISTCC_SSH            ssh command with options (default "ssh")
    DISTCC_VERBOSE        1 traces every decision to stderr
    DISTCC_LOG            file to append the trace and warnings to
    DISTCC_FALLBACK       0 turns a failed remote compile into an error
    DISTCC_RELAY_TIMEOUT  seconds an idle relay lives (default 300)
    DISTCC_CONNECT_TIMEOUT seconds to wait for a host's banner (default 20)
    DISTCC_BACKOFF_PERIOD seconds a host that failed is left alone (60)
    DISTCC_IO_TIMEOUT     seconds a busy host may stay silent, or its
                          compiler use no CPU, before the job is lost (60)
    DISTCC_JOB_TIMEOUT    seconds a job may take on a host (default 1800)
    DISTCC_SKIP_LOCAL_RETRY  1: a lost job fails instead of compiling here
    DISTCC_SAVE_TEMPS     1 keeps the text sent ($TMPDIR) and the host's job
                          directory, and says where (the host must set it too)
    DISTCC_SANDBOX        0 on a build host: compile without bubblewrap
"""

import _socket
import errno
import fcntl
import gc
import marshal
import os
import select
import stat
import sys
import time
import zlib

# The wrapper's imports cost every compile: those above are built in (or loaded
# by os); those that pull in enum or re (json, re, socket, subprocess, signal,
# shlex, hashlib, random) cost 5-10 ms each, so are imported only where needed.

# ---------------------------------------------------------------------------
# Constants & protocol
#
# Everything both ends must agree on, and the defaults.  No I/O here.

VERSION = "0.4.0"
PROTOCOL = 2                         # 2: no TEXT frames; PROGRESS per job
BANNER_PREFIX = b"DISTCC.PY "
BANNER_FORMAT = "DISTCC.PY %d %s cpus=%d sandbox=%s\n"
BANNER_NOISE_LIMIT = 64 * 1024       # shell noise we skip before the banner

# struct's ">2sBBII", packed by hand: importing struct slows every wrapper.
HEADER_SIZE = 12
MAGIC = b"DP"
MAX_FRAME = 256 * 1024 * 1024        # checked before any allocation

JOB, RESULT, ERROR, QUERY, IDENTITY, PROGRESS, CANCEL = 1, 2, 3, 4, 5, 6, 8
FRAME_NAMES = {JOB: "JOB", RESULT: "RESULT", ERROR: "ERROR", QUERY: "QUERY",
               IDENTITY: "IDENTITY", PROGRESS: "PROGRESS", CANCEL: "CANCEL"}
JSON, MARSHAL = "json", "marshal"    # metadata encodings (see Framing)
PROGRESS_INTERVAL = 2.0              # server heartbeat while jobs run
HANGUP_POLL = 0.25                   # a relay polls for wrappers that left
TAKE_BACK_POLL = 0.1                 # a queued job polls for a local slot

# Level 1, by measurement on the 2-core test machine: Brotli's encode.c as
# sent (1.09 MB) shrinks 3.4x at 72 MB/s; level 2 3.6x at 66 MB/s, level 6
# 4.3x at 17 MB/s, zlib's RLE and Huffman-only strategies 1.8x, no faster.
COMPRESS_LEVEL = 1

# A job is sent again with the missing headers its diagnostics quote, up to:
MAX_EXTRA_FILES = 32
MAX_EXTRA_BYTES = 8 * 1024 * 1024
MAX_SESSION_JOBS = 256               # jobs of one session on a host at once
MAX_HOST_CPUS = 256                  # a host claiming more gets this many

ENV_HOSTS = "DISTCC_HOSTS"
ENV_DIR = "DISTCC_DIR"
ENV_SSH = "DISTCC_SSH"
ENV_VERBOSE = "DISTCC_VERBOSE"
ENV_LOG = "DISTCC_LOG"
ENV_FALLBACK = "DISTCC_FALLBACK"
ENV_RELAY_TIMEOUT = "DISTCC_RELAY_TIMEOUT"
ENV_CONNECT_TIMEOUT = "DISTCC_CONNECT_TIMEOUT"
ENV_BACKOFF_PERIOD = "DISTCC_BACKOFF_PERIOD"
ENV_IO_TIMEOUT = "DISTCC_IO_TIMEOUT"
ENV_JOB_TIMEOUT = "DISTCC_JOB_TIMEOUT"
ENV_SKIP_LOCAL_RETRY = "DISTCC_SKIP_LOCAL_RETRY"
ENV_SAVE_TEMPS = "DISTCC_SAVE_TEMPS"
ENV_SANDBOX = "DISTCC_SANDBOX"

DEFAULT_RELAY_TIMEOUT = 300.0
DEFAULT_CONNECT_TIMEOUT = 20.0
DEFAULT_HOST_LIMIT = 4                # jobs per ssh host without /LIMIT
DEFAULT_LOCAL_LIMIT = 2               # jobs for "localhost" without /LIMIT
DEFAULT_BACKOFF_PERIOD = 60.0
DEFAULT_IO_TIMEOUT = 60.0            # silence from a host with jobs in flight
DEFAULT_JOB_TIMEOUT = 1800.0         # one job on a host, at most
# Localhost slots yield the CPU to the wrappers and preprocessors feeding the
# hosts (pinned benchmark, 6 paired rounds' median: 21.3 s; 24.2 s at nice 0).
LOCAL_SLOT_NICE = 10
RELAY_RECONNECT_DELAY = 5.0          # a failed connect stands this long
DEFAULT_REMOTE_COMMAND = "distcc.py"
CONTROL_PERSIST = "600"              # seconds a master outlives its relay
SERVER_ALIVE_INTERVAL = "15"
SOCKET_PATH_LIMIT = 100              # sun_path is 104 (BSD) or 108 bytes

# Locale and colours change compiler output: jobs carry them, not ssh SendEnv.
FORWARDED_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES",
                 "GCC_COLORS")

# Forwarded values may be locales or GCC_COLORS's list, never a path.
LOCALE_PATTERN = (r"(C|POSIX|[a-z]{2,3}(_[A-Z]{2})?)(\.[A-Za-z0-9-]+)?"
                  r"(@[a-z]+)?")
ENV_PATTERNS = {"LANGUAGE": "%s(:%s)*" % (LOCALE_PATTERN, LOCALE_PATTERN),
                "GCC_COLORS": r"([a-z-]+=[0-9;]*(:[a-z-]+=[0-9;]*)*)?"}

EXIT_DISTCC_FAILED = 100             # remote compile failed, fallback off
EXIT_BAD_ARGUMENTS = 101             # usage or configuration error

# ---------------------------------------------------------------------------
# Errors & logging
#
# One exception class per failure; its kind names it in ERROR frames and stats.


class DistccError(Exception):
    """Base of every error distcc.py raises on purpose."""
    kind = "error"

    def __init__(self, detail, hint=""):
        Exception.__init__(self, detail)
        self.detail, self.hint = detail, hint

    def __str__(self):
        text = "%s: %s" % (self.kind, self.detail)
        return text + ("; " + self.hint if self.hint else "")


class UsageError(DistccError):
    """Bad arguments or configuration: the build cannot go on."""
    kind = "usage"


class LocalOnly(DistccError):
    """The compile cannot be distributed (not a failure); carries why."""
    kind = "local"

    def __init__(self, reason, job=None):
        DistccError.__init__(self, reason)
        self.job = job                # what scanning learned, or None

    def __str__(self):
        return self.detail


class TransportError(DistccError):
    """ssh, the relay or the host is unreachable or died."""
    kind = "transport"


class RelayLost(TransportError):
    """The local relay died or vanished; the host itself may be fine."""
    kind = "relay"


class ProtocolError(DistccError):
    """Bad magic, a short or oversized frame, or a bad banner."""
    kind = "protocol"


class Rejected(DistccError):
    """The host refused the job (say, a compiler it does not have)."""
    kind = "rejected"


ERROR_KINDS = {c.kind: c for c in (TransportError, RelayLost, ProtocolError,
                                   Rejected)}


class Log:
    """Where warnings and the trace go; set once by main dispatch."""
    role, verbose, path = "wrapper", False, None


def _emit(line, to_stderr):
    if Log.path:
        try:
            with open(Log.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            to_stderr = True  # an unwritable log must not hide the message
    if to_stderr:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # a detached relay has no stderr left


def warn(message):
    """Print 'distcc.py: MESSAGE' to stderr (and DISTCC_LOG)."""
    role = "" if Log.role == "wrapper" else Log.role + ": "
    _emit("distcc.py: " + role + message, True)


def trace(message):
    """Log MESSAGE when DISTCC_VERBOSE is set (to DISTCC_LOG, else stderr)."""
    if Log.verbose:
        _emit("distcc.py[%d] %s: %s" % (os.getpid(), Log.role, message),
              not Log.path)


def describe_exit(status, program):
    """Say in words what an exit status of PROGRAM means."""
    if status < 0:
        import signal
        name = {s.value: s.name for s in signal.Signals}.get(-status)
        return "%s was killed by %s" % (program, name or "signal %d" % -status)
    if program == "ssh" and status == 255:
        return "ssh failed (exit 255: connection or authentication)"
    what = {126: "is not executable", 127: "not found"}.get(status)
    if what:
        return "%s: remote command %s (exit %d)" % (program, what, status)
    return "%s exited with status %d" % (program, status)
# ---------------------------------------------------------------------------
# Framing
#
# Frames on any binary file, and metadata-plus-blobs bodies.  Metadata is
# JSON on the ssh leg (the host trusts no client) and marshal on the relay's
# user-only socket (SO_PEERCRED): the wrapper never pays json's 8 ms.


def read_exactly(f, n):
    """Read exactly N bytes from F, or raise ProtocolError at EOF."""
    buf = bytearray()  # by the megabyte: a header's claim allocates nothing
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ProtocolError("connection closed inside a frame: expected "
                                "%d bytes, received %d" % (n, len(buf)))
        buf += chunk
    return buf


def read_frame(f):
    """Read one frame: (type, job_id, body), or None on a clean EOF."""
    first = f.read(1)
    if not first:
        return None
    header = bytes(first) + bytes(read_exactly(f, HEADER_SIZE - 1))
    magic, kind = header[:2], header[2]
    job_id, length = (int.from_bytes(header[i:i + 4], "big") for i in (4, 8))
    if magic != MAGIC:
        raise ProtocolError("bad frame magic %r (expected %r)"
                            % (magic, MAGIC))
    if kind not in FRAME_NAMES:
        raise ProtocolError("unknown frame type %d" % kind)
    if length > MAX_FRAME:
        raise ProtocolError("frame of %d bytes is over the %d-byte limit"
                            % (length, MAX_FRAME))
    return kind, job_id, read_exactly(f, length)


def frame_parts(kind, job_id, parts):
    """Return the header for a frame whose body is the buffers PARTS."""
    length = sum(map(len, parts))
    if length > MAX_FRAME:
        raise ProtocolError("frame of %d bytes is over the %d-byte limit"
                            % (length, MAX_FRAME))
    return MAGIC + bytes((kind, 0)) + job_id.to_bytes(4, "big") + \
        length.to_bytes(4, "big")


def write_frame(f, kind, job_id, parts):
    """Write one frame whose body is the concatenation of PARTS, and flush."""
    if isinstance(parts, (bytes, bytearray, memoryview)):
        parts = [parts]
    f.writelines([frame_parts(kind, job_id, parts), *parts])
    f.flush()


def dump_meta(meta, encoding=JSON):
    """Encode the metadata dict META in ENCODING (JSON or MARSHAL)."""
    if encoding == MARSHAL:
        return marshal.dumps(meta)
    import json
    try:
        return json.dumps(meta, separators=(",", ":")).encode()
    except (TypeError, ValueError) as e:
        raise ProtocolError("metadata cannot be sent: %s" % e)


def load_meta(data, encoding=JSON):
    """Decode dump_meta's output; ProtocolError unless it decodes to a dict."""
    if encoding != MARSHAL:
        import json
    try:
        meta = marshal.loads(data) if encoding == MARSHAL else json.loads(data)
    except (ValueError, EOFError, TypeError, RecursionError) as e:
        raise ProtocolError("metadata is not %s: %s" % (encoding, e))
    if not isinstance(meta, dict):
        raise ProtocolError("metadata is not a dict")
    return meta


def pack_body(meta, blobs=(), encoding=JSON):
    """Return the parts of a metadata-plus-blobs body."""
    text = dump_meta(dict(meta, sizes=[len(b) for b in blobs]), encoding)
    return [len(text).to_bytes(4, "big"), text] + list(blobs)


def unpack_meta(body, encoding=JSON):
    """Return (meta, offset of the first blob) of BODY, or ProtocolError."""
    if len(body) < 4:
        raise ProtocolError("body of %d bytes has no metadata" % len(body))
    end = 4 + int.from_bytes(body[:4], "big")
    if end > len(body):
        raise ProtocolError("metadata of %d bytes overruns a %d-byte body"
                            % (end - 4, len(body)))
    return load_meta(bytes(body[4:end]), encoding), end


def unpack_body(body, encoding=JSON):
    """Return (meta, blobs) of BODY; ProtocolError if sizes do not add up."""
    meta, pos = unpack_meta(body, encoding)
    sizes = meta.get("sizes")
    if not isinstance(sizes, list) or not all(
            isinstance(s, int) and s >= 0 for s in sizes):
        raise ProtocolError("metadata has no valid 'sizes' list")
    if pos + sum(sizes) != len(body):
        raise ProtocolError("blob sizes %s do not match a %d-byte body"
                            % (sizes, len(body)))
    view, blobs = memoryview(body), []
    for size in sizes:
        blobs.append(view[pos:pos + size])
        pos += size
    return meta, blobs


def error_body(kind, message, encoding=JSON):
    """Return the body of an ERROR frame."""
    return dump_meta({"kind": kind, "message": message}, encoding)


def raise_error_body(body, encoding=JSON):
    """Raise the exception an ERROR frame's body describes."""
    try:
        err = load_meta(bytes(body), encoding)
        kind, message = str(err["kind"]), str(err["message"])
    except (ProtocolError, KeyError):
        raise ProtocolError("malformed ERROR frame")
    raise ERROR_KINDS.get(kind, ProtocolError)(message)


def decompress(data, limit=MAX_FRAME):
    """Inflate zlib DATA; ProtocolError if corrupt or over LIMIT bytes."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)     # zlib reads 0 as no limit
    except zlib.error as e:
        raise ProtocolError("corrupt compressed data: %s" % e)
    if len(out) > limit or d.unconsumed_tail or not d.eof:
        raise ProtocolError("compressed data is truncated or over %d bytes"
                            % limit)
    return out
# ---------------------------------------------------------------------------
# Argument scanning
#
# Pure functions that turn a compiler command line into a Job or raise
# LocalOnly with the reason (the wrapper checks what needs the file system);
# the server's check_server_args checks options by the same lists.

SOURCE_LANGS = {
    ".c": "c", ".cc": "c++", ".cpp": "c++", ".cxx": "c++", ".cp": "c++",
    ".c++": "c++", ".C": "c++", ".CPP": "c++", ".m": "objective-c",
    ".mm": "objective-c++", ".M": "objective-c++",
    ".i": "cpp-output", ".ii": "c++-cpp-output",
    ".mi": "objective-c-cpp-output", ".mii": "objective-c++-cpp-output"}
DISTRIBUTABLE_LANGS = set(SOURCE_LANGS.values())
PREPROCESSED_LANGS = {lang for lang in DISTRIBUTABLE_LANGS if "output" in lang}

# Preprocessor options: they run here, and are dropped from the host's command.
CPP_OPTIONS_WITH_VALUE = (
    "-D", "-U", "-I", "-MF", "-MT", "-MQ", "-include", "-imacros", "-isystem",
    "-iquote", "-idirafter", "-iprefix", "-iwithprefixbefore", "-iwithprefix",
    "-isysroot", "-imultilib", "--sysroot")
CPP_FLAGS = {"-MD", "-MMD", "-MP", "-MG", "-nostdinc", "-nostdinc++",
             "-undef", "-C", "-CC", "-H", "-P", "-remap"}
# Link-only options: meaningless with -c, so the host never sees them.
LINK_OPTIONS_WITH_VALUE = {"-L", "-l", "-T", "-u", "-z", "-e", "-Xlinker"}
LINK_FLAGS = {"-static", "-shared", "-pie", "-no-pie", "-rdynamic", "-s",
              "-nostdlib", "-nodefaultlibs", "-nostartfiles"}

# Other options whose value is a separate argument, not a source file.
OPTIONS_WITH_SEPARATE_VALUE = LINK_OPTIONS_WITH_VALUE | {
    "--param", "-target", "--target", "-Xpreprocessor", "-Xassembler",
    "-Xclang", "-mllvm", "-aux-info", "-arch", "-dumpbase", "-dumpdir",
    "-dumpbase-ext", "-wrapper", "-specs", "-B", "-A", "-G", "-MJ"}

# Compiled here, with the reason: options remote_refusal passes, or refuses
# less clearly (-E, -M and -MM also set what the local compile writes).
LOCAL_EXACT = {
    "-E": "-E only preprocesses",
    "-M": "-M only lists dependencies", "-MM": "-MM only lists dependencies",
    "-fsyntax-only": "-fsyntax-only writes no object",
    **{native: native + " tunes for this machine"
       for native in ("-march=native", "-mtune=native", "-mcpu=native")},
    **dict.fromkeys(("-g3", "-ggdb3"),
                    "-g3 records macros the host would see differently"),
    # gcc -pedantic warns of the line markers in the host's text; only
    # -fpreprocessed input may carry them, and it shows in DW_AT_producer.
    **dict.fromkeys(("-pedantic", "-Wpedantic", "-pedantic-errors"),
                    "-pedantic warns about the host's line markers")}


class Job:
    """What one compile is, as the wrapper and the server need it."""

    def __init__(self, compiler, argv):
        self.compiler = compiler   # argv[0] as the build spelled it
        self.argv = argv           # the whole command, compiler first
        self.source = None         # input path as given
        self.lang = None           # language, from -x or the extension
        self.explicit_lang = None  # the -x value, if the user gave one
        self.output = None         # object (or .s) path as gcc would write
        self.mode = None           # "-c" or "-S"
        self.cpp_args = []         # arguments for the local preprocessing
        self.remote_args = []      # code-generation arguments for the host
        self.depfile = None        # .d path the preprocessing writes


def compiler_family(compiler):
    """Return "clang" or "gcc" from the compiler's name."""
    return "clang" if "clang" in os.path.basename(compiler) else "gcc"


def replace_suffix(path, suffix):
    """Replace PATH's extension with SUFFIX, as gcc's %.SUFFIX does."""
    head, base = os.path.split(path)
    dot = base.rfind(".")
    return os.path.join(head, (base[:dot] if dot > 0 else base) + suffix)


def split_value_option(arg, rest):
    """If ARG is one of CPP_OPTIONS_WITH_VALUE, return (name, value, the
    arguments), a separate value taken from the iterator REST; else None."""
    for name in CPP_OPTIONS_WITH_VALUE:
        if arg == name:
            value = next(rest, None)
            if value is None:
                raise LocalOnly("%s has no value" % name)
            return name, value, [arg, value]
        joined = name + "=" if name.startswith("--") else name
        if arg.startswith(joined):
            return name, arg[len(joined):], [arg]
    return None


def scan_args(argv):
    """Turn a compiler command line into a Job.  Raises LocalOnly to compile
    here; its job still names the input and output (for --explain)."""
    if not argv:
        raise LocalOnly("no compiler given")
    job = Job(argv[0], list(argv))
    family = compiler_family(job.compiler)
    reason = None            # the first reason to stay local
    sources = []             # (path, -x language in force)
    deps = targets = False   # -MD or -MMD seen; -MT or -MQ seen
    mf = dwarf = None        # -MF value; N of -gdwarf-N
    wp_deps = debug = False  # -Wp,-MD,FILE seen; the last -g is not -g0
    stdout_only = None       # -E, -M, -MM, -fsyntax-only: what it is
    cpp, remote = [], []     # arguments kept for preprocessing; for the host
    output = lang = None     # -o value; -x value in force
    rest = iter(argv[1:])    # an option with a value takes the next one
    for arg in rest:
        reason = reason or LOCAL_EXACT.get(arg)
        if arg.startswith("-include-pch"):  # not -include with a value
            reason = reason or "precompiled headers are files here"
        if arg in ("-E", "-M", "-MM", "-fsyntax-only"):
            stdout_only = arg
        if arg == "-" or not arg.startswith("-"):
            if arg.startswith("@"):
                reason = reason or "@file response files are read here"
            else:
                sources.append((arg, lang))
        elif arg in ("-c", "-S"):
            if job.mode and job.mode != arg:
                reason = reason or "both -c and -S given"
            job.mode = arg
        elif arg.startswith("-o"):
            output = next(rest, None) if arg == "-o" else arg[2:]
            if output is None:
                reason = reason or "-o has no value"
        elif arg.startswith("-x"):
            lang = next(rest, "") if arg == "-x" else arg[2:]
            if lang == "none":
                lang = None
            elif lang not in DISTRIBUTABLE_LANGS:
                reason = reason or "-x %s is not C, C++ or Objective-C" % lang
        elif arg.startswith("-Wp,"):
            wp = arg[4:].split(",")
            if len(wp) == 2 and wp[0] in ("-MD", "-MMD"):
                # gcc hands "-MD FILE" straight to the preprocessor: FILE is
                # the .d, and its target is derived as for -MD.
                deps, mf, wp_deps = True, wp[1], family == "gcc"
                cpp.append(wp[0])
            elif all(w.startswith(("-D", "-U", "-I")) and len(w) > 2
                     for w in wp):
                cpp.append(arg)
            else:
                reason = reason or "-Wp, passes options straight to the " \
                    "preprocessor"
        elif split := split_value_option(arg, rest):
            name, value, words = split
            if name == "-MF":
                mf = value
            else:
                targets = targets or name in ("-MT", "-MQ")
                cpp.extend(words)
        elif arg in CPP_FLAGS:
            deps = deps or arg in ("-MD", "-MMD")
            cpp.append(arg)
        elif arg in OPTIONS_WITH_SEPARATE_VALUE:
            value = next(rest, None)
            if value is None:
                reason = reason or "%s has no value" % arg
                continue
            cpp.extend([arg, value])
            if arg in ("--param", "-target", "--target"):
                # The host gets the joined spelling (see remote_refusal).
                arg = "--%s=%s" % (arg.lstrip("-"), value)
                remote.append(arg)
            if arg not in LINK_OPTIONS_WITH_VALUE:
                reason = reason or remote_refusal(arg)
        elif arg.startswith(("-L", "-l", "-Wl,")) or arg in LINK_FLAGS:
            cpp.append(arg)  # link-only: the host does not need it
        else:
            if arg.startswith("-gdwarf-") and arg[8:].isdecimal():
                dwarf = int(arg[8:])
            if arg.startswith("-g"):
                debug = arg != "-g0"
            reason = reason or remote_refusal(arg)
            cpp.append(arg)
            remote.append(arg)

    # What the local compiler would read and write, for every decision.
    job.source = [s for s, _ in sources] if len(sources) > 1 else \
        (sources[0][0] if sources else None)
    stem = os.path.basename(sources[0][0]) if sources else None
    if len(sources) == 1:
        job.explicit_lang = sources[0][1]
        dot = stem.rfind(".")    # not a hidden file's leading dot
        job.lang = job.explicit_lang or SOURCE_LANGS.get(
            stem[dot:] if dot > 0 else "")
    if stdout_only:
        job.output = {"-E": output, "-M": mf or output,
                      "-MM": mf or output}.get(stdout_only)
    elif job.mode is None:
        job.output = output or "a.out"
    elif output is not None:
        job.output = output
    elif len(sources) == 1:
        llvm = "-emit-llvm" in argv[1:]  # clang's bitcode, or its text
        suffix = {"-c": (".o", ".bc"), "-S": (".s", ".ll")}[job.mode][llvm]
        job.output = replace_suffix(stem, suffix)

    if family == "clang" and debug and (dwarf or 5) >= 5:
        # DWARF 5 line tables carry an MD5 of each source file; clang can
        # only hash the text it compiles, which is not the original file.
        reason = reason or "clang -g (DWARF 5) records source checksums " \
            "the host cannot reproduce; -gdwarf-4 can be distributed"
    if reason:
        raise LocalOnly(reason, job)
    if not job.mode:
        raise LocalOnly("no -c or -S: this command links", job)
    if len(sources) != 1:
        raise LocalOnly("%d source files in one command" % len(sources)
                        if sources else "no source file", job)
    if job.source == "-":
        raise LocalOnly("source is standard input", job)
    if job.lang is None:
        raise LocalOnly("%s is not a C, C++ or Objective-C source"
                        % job.source, job)
    if stem.startswith(("conftest.", "conftest_")):
        raise LocalOnly("configure test programs are cheap and fragile", job)
    if output == "-":
        raise LocalOnly("output goes to standard output", job)
    if "-gsplit-dwarf" in remote and os.path.isabs(job.output):
        # gcc records the .dwo under the -o name as spelled, and prefix maps
        # do not apply to it (gcc bug 91888): only a relative -o maps back.
        raise LocalOnly("-gsplit-dwarf with an absolute -o records the "
                        "host's path", job)

    if deps:
        # The local compile derives the .d name and its target from -o;
        # the preprocessing step has no -o, so spell both out.
        if mf is None:
            mf = replace_suffix(output if output is not None else stem, ".d")
        if not targets:
            # gcc's default target is the -o name, quoted for make; without
            # -o it is the source's stem with .o, even for -S.
            # With -Wp,-MD the preprocessor never hears of -o either.
            cpp.extend(["-MQ", output if output is not None and not wp_deps
                        else replace_suffix(stem, ".o")])
        job.depfile = mf
    if mf is not None:
        cpp.extend(["-MF", mf])
    job.cpp_args, job.remote_args = cpp, remote
    return job


def preprocess_argv(job):
    """Return the local preprocessing command for JOB (output on stdout)."""
    # gcc leaves macros unexpanded so the host computes the same columns
    # and code as a local compile; includes and conditionals resolve here.
    clang = compiler_family(job.compiler) == "clang"
    mode = ["-E", "-frewrite-includes" if clang else "-fdirectives-only"]
    lang = ["-x", job.explicit_lang] if job.explicit_lang else []
    return [job.compiler] + job.cpp_args + mode + lang + [job.source]


def strip_builtins(text):
    """Return TEXT minus gcc's leading '<built-in>' #defines, as buffers."""
    # The host's compiler would warn that its own built-ins are redefined.
    # The block follows line markers naming the source and (with -g) cwd.
    marker = b'# 0 "<built-in>"\n'
    start = text.find(marker, 0, 8192)
    if start < 0 or any(not line.startswith(b"# ")
                        for line in text[:start].splitlines()):
        return [text]
    pos = start
    while text.startswith(marker, pos):
        end = text.find(b"\n", pos + len(marker))
        if end < 0 or not text.startswith(b"#define ", pos + len(marker)):
            break
        pos = end + 1
    view = memoryview(text)
    return [view[:start], view[pos:]]


# Compilers a server runs and links answer to, x86_64-linux-gnu-gcc-12 too.
COMPILER_BASENAMES = ("gcc", "g++", "cc", "c++", "clang", "clang++")
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                       "0123456789_.")
VERSION_CHARS = frozenset("0123456789.")


def is_compiler_name(name):
    """Whether NAME is a compiler's name (no re: main checks every argv[0])."""
    if not isinstance(name, str):
        return False
    parts = name.split("-")
    if len(parts) > 1 and parts[-1] and set(parts[-1]) <= VERSION_CHARS:
        parts.pop()                 # the version suffix
    return parts[-1] in COMPILER_BASENAMES and \
        all(p and set(p) <= NAME_CHARS for p in parts[:-1])


# What may reach a host's compiler: options that only change code generation,
# warnings, language and debug info; the scanner compiles anything else here,
# the server refuses it (a hand-crafted client can send anything).  gcc reads
# "@name" anywhere as a response file and takes long aliases and unique
# abbreviations of options (--prefix= is -B, --for-assembler= is -Xassembler):
# so no "--" option passes but --param= and --target=, no value names a path
# but in options that only record one, and only OPTION_CHARS pass.
REMOTE_FAMILIES = ("-O", "-g", "-W", "-f", "-m", "-std=", "-stdlib=",
                   "--param=", "--target=")
REMOTE_EXACT = frozenset(("-ansi", "-w", "-pipe", "-pthread", "-trigraphs",
                          "-Qn", "-Qy", "-Qunused-arguments"))
REMOTE_PATH_STRINGS = (       # values that are recorded, never opened
    "-ffile-prefix-map=", "-fdebug-prefix-map=", "-fmacro-prefix-map=",
    "-fprofile-prefix-map=", "-fcoverage-prefix-map=", "-frandom-seed=",
    "-fdebug-compilation-dir=", "-fcoverage-compilation-dir=",
    "-ffile-compilation-dir=", "-finstrument-functions-exclude-file-list=")
OPTION_CHARS = NAME_CHARS | frozenset("-=,+:%")
# Within those families, what reads or writes files or runs programs: every
# option taking a file, directory, plugin or program in clang's --help-hidden
# and gcc --help=common,optimizers,warnings,target,c,c++,undocumented ...
REMOTE_DENIED = (
    "-Wa,", "-Wl,", "-Wp,", "-fplugin", "-fpass-plugin", "-fprofile",
    "-fauto-profile", "-fcs-profile", "-fdump-", "-fcallgraph-info",
    "-fstack-usage", "-fmodule", "-fsystem-module", "-fprebuilt-module",
    "-fsave-optimization-record", "-foptimization-record", "-fpre-include",
    "-fself-test", "-fcompare-debug", "-fltrans", "-fresolution", "-foffload",
    "-fdiagnostics-format", "-fdiagnostics-add-output",
    "-fdiagnostics-set-output", "-fsanitize-blacklist",
    "-fsanitize-ignorelist", "-fsanitize-system-ignorelist",
    "-fsanitize-coverage-allowlist", "-fsanitize-coverage-blocklist",
    "-fxray-attr-list", "-fxray-always-instrument", "-fxray-never-instrument",
    "-fcrash-diagnostics", "-fthinlto", "-fembed", "-ftime-trace", "-fdepfile",
    "-fapinotes", "-fbasic-block-sections=list", "-fdirectives-only",
    "-fpreprocessed", "-fworking-directory", "-fpch", "-frepo",
    "-ftest-coverage", "-fbuild-session", "-frewrite-map-file",
    "-fproc-stat-report", "-fexperimental-sanitize-metadata-ignorelist",
    "-mllvm", "-module", "-gen-")
# ... but for these, which only change code generation.
REMOTE_DENIED_BUT = ("-fprofile-update=", "-fprofile-reorder-functions",
                     "-fprofile-partial-training", "-fprofile-abs-path",
                     "-fprofile-prefix-map=", "-fprofile-info-section",
                     "-fprofile-correction")
# What -Wa, may pass to a host's assembler (as abbreviates too: as spelled).
ASSEMBLER_OPTIONS = frozenset((
    "--noexecstack", "--execstack", "-mrelax-relocations=yes",
    "-mrelax-relocations=no", "--compress-debug-sections",
    "--nocompress-debug-sections", "-mbranches-within-32B-boundaries",
    "--32", "--64"))


def remote_refusal(arg):
    """Return why option ARG may not run on a host, or None.  Values of
    --param and --target come joined (--param=NAME=VALUE)."""
    path = arg.startswith(REMOTE_PATH_STRINGS)
    bad = set(arg) - OPTION_CHARS - (set("/") if path else set())
    name = arg.split("=", 1)[0]
    if bad:
        return "%s holds %r, which no option sent to a host may" % (
            name, "".join(sorted(bad)))
    if arg.startswith("-Wa,"):
        items = [a for a in arg[4:].split(",") if a not in ASSEMBLER_OPTIONS]
        return "-Wa,%s may make the assembler write files" % ",".join(items) \
            if items else None
    if arg.startswith(REMOTE_DENIED) and not \
            arg.startswith(REMOTE_DENIED_BUT) or \
            arg.startswith("-fopt-info") and "=" in arg:
        return "%s reads or writes files or runs programs" % name
    if arg in REMOTE_EXACT or arg.startswith(REMOTE_FAMILIES):
        return None
    return "%s is not among the options a host runs" % name


def check_server_args(args):
    """Raise Rejected unless ARGS is a list of options a host runs."""
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise Rejected("arguments must be a list of strings")
    for arg in args:
        why = remote_refusal(arg) if arg.startswith("-") else \
            "%r is not an option" % arg[:100]
        if why:
            raise Rejected("refused option: %s" % why)
# ---------------------------------------------------------------------------
# Hosts
#
# DISTCC_HOSTS in distcc's ssh syntax, parsed and chosen from by pure
# functions; the slots that limit each host's jobs and the backoff of a failed
# host, files in $DISTCC_DIR that hold across every wrapper of this user.


class Host:
    """One entry of the host list."""

    def __init__(self, spec, hostname, user=None, limit=None, command=None):
        self.spec = spec              # the token as written
        self.hostname = hostname      # "localhost" for local slots
        self.user = user              # ssh user, or None for the default
        self.limit = limit            # max concurrent jobs, or None
        self.command = command        # path of distcc.py on the host
        self.is_local = hostname == "localhost" and user is None and \
            not spec.startswith("@")  # a slot here, not ssh to localhost

    def key(self):
        """Return a stable name for the host's relay and files: its name,
        and zlib's checksums of user, host and command (hashlib costs 4 ms)."""
        ident = "%s\0%s\0%s" % (self.user or "", self.hostname,
                                self.command or DEFAULT_REMOTE_COMMAND)
        if self.hostname == "localhost":
            # The local pools (compile, "cpp", "local") need their own
            # slot files; a limit change must not move a remote relay.
            ident += "\0" + self.spec.split("/")[0]
        ident = ident.encode("utf-8", "surrogateescape")
        name = "".join(c if c in NAME_CHARS or c == "-" else "_"
                       for c in self.hostname[:16])
        return "%s-%08x%08x" % (name, zlib.crc32(ident), zlib.adler32(ident))

    def __repr__(self):
        return "Host(%r)" % self.spec


def parse_host(token):
    """Parse a DISTCC_HOSTS token into a Host; raises UsageError naming it."""
    body = token
    # distcc's ",lzo", ",cpp" and ",auth": compression is always on here.
    while body.endswith((",lzo", ",cpp", ",auth")):
        body = body.rsplit(",", 1)[0]
    if body.startswith("localhost"):
        name, slash, text = body.partition("/")
        limit = int(text) if text.isdecimal() else 0
        if name != "localhost" or slash and limit < 1:
            raise UsageError("bad host %r" % token,
                             "write localhost or localhost/N")
        return Host(token, "localhost", limit=limit or None)
    if "@" not in body:
        raise UsageError("host %r is a TCP host" % token,
                         "distcc.py speaks ssh only: write it as @%s"
                         % body.split("/")[0].split(":")[0])
    body = body[1:] if body.startswith("@") else body
    user = command = limit = None
    if "@" in body.split(":")[0].split("/")[0]:
        user, body = body.split("@", 1)
        if not user:
            raise UsageError("bad host %r: empty user name" % token,
                             "write @host or user@host")
    if ":" in body:
        body, command = body.split(":", 1)
        if not command:
            raise UsageError("bad host %r: empty command after ':'" % token,
                             "write @host:/path/to/distcc.py")
    if "/" in body:
        body, text = body.split("/", 1)
        if not text.isdecimal() or int(text) < 1:
            raise UsageError("bad host %r: limit %r is not a positive number"
                             % (token, text), "write @host/8")
        limit = int(text)
    if not body or body.startswith("-") or any(c.isspace() for c in body):
        raise UsageError("bad host %r: no host name" % token,
                         "write @host or user@host")
    return Host(token, body, user=user, limit=limit, command=command)


class HostList(list):
    """The parsed host list and its --options."""
    randomize = False          # --randomize: shuffle before choosing
    cpp_slots = None           # --localslots_cpp=N: concurrent preprocessors
    local_slots = None         # --localslots=N: concurrent local compiles


def parse_hosts(text):
    """Parse a host list with # comments; raises UsageError at a bad token."""
    hosts = HostList()
    for line in text.splitlines():
        for token in line.split("#", 1)[0].split():
            if token == "--randomize":
                hosts.randomize = True
            elif token.startswith(("--localslots=", "--localslots_cpp=")):
                name, _, value = token.partition("=")
                if not value.isdecimal() or int(value) < 1:
                    raise UsageError("bad option %r: not a positive number"
                                     % token, "write %s=4" % name)
                setattr(hosts, "cpp_slots" if name == "--localslots_cpp"
                        else "local_slots", int(value))
            elif token.startswith("-"):
                raise UsageError("unknown host list option %r" % token,
                                 "use --randomize, --localslots=N or "
                                 "--localslots_cpp=N")
            else:
                hosts.append(parse_host(token))
    return hosts


def slot_limit(host, reported=None):
    """How many of our jobs HOST may run at once (REPORTED: its CPUs)."""
    # The extra job waits there with its text for a free CPU: a one-CPU host
    # built Brotli in 17.9 s with 2 jobs, 21.9 s with 1 (medians of 5 pairs).
    if host.limit or host.is_local:
        return host.limit or DEFAULT_LOCAL_LIMIT
    return reported + 1 if reported else DEFAULT_HOST_LIMIT


def choose_host(free):
    """Pick from FREE, a list of (host, free slots), the host with the most
    free slots; list order breaks ties.  Returns None if none is free."""
    host, count = max(free, key=lambda pair: pair[1], default=(None, 0))
    return host if count > 0 else None


class Slot:
    """A held slot of a host: a flock on one of its slot files."""

    def __init__(self, host, fd):
        self.host = host            # the Host this slot belongs to
        self.fd = fd                # open, locked slot file

    def release(self):
        """Give the slot back (closing the file drops the lock)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def try_slot(directory, name):
    """Lock slot file NAME without waiting; return its fd or None."""
    fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise


def acquire_slot(config, hosts, queue_name="queue"):
    """Take a slot of the host in HOSTS with the most free slots.  Blocks until
    one is free: QUEUE_NAME's holder polls, the others sleep in flock() (a
    queue per pool: one holding a host slot may queue for a cpp slot)."""
    directory = os.path.join(config.dir, "slots")
    queue = os.open(os.path.join(directory, queue_name),
                    os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(queue, fcntl.LOCK_EX)
        delay = 0.002
        while (slot := take_free_slot(config, directory, hosts)) is None:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        return slot
    finally:
        os.close(queue)


def take_free_slot(config, directory, hosts):
    """Return a Slot of the host in HOSTS with the most free slots, or None;
    one slot file per host stays open (/1100 must not cost 1100 fds)."""
    fds = {}                        # host: the first of its free slots
    free = []                       # (host, free slots)
    try:
        for host in hosts:
            key, count = host.key(), 0
            for n in range(host_slots(config, host)):
                fd = try_slot(directory, "%s.%d" % (key, n))
                if fd is not None:
                    count += 1
                    if fds.setdefault(host, fd) != fd:
                        os.close(fd)
            free.append((host, count))
        chosen = choose_host(free)
        return Slot(chosen, fds.pop(chosen)) if chosen else None
    finally:
        for fd in fds.values():
            os.close(fd)


def host_slots(config, host):
    """slot_limit of HOST, with the CPU count its relay recorded."""
    text = "" if host.limit or host.is_local else \
        read_host_note(config, host, "cpus").strip()
    return slot_limit(host, int(text) if text.isdecimal() else None)


def others_queued(directory):
    """Whether a wrapper holds the slot queue (it waits for a slot)."""
    fd = try_slot(directory, "queue")
    if fd is not None:
        os.close(fd)
    return fd is None


def write_host_note(config, host, kind, text, append=False):
    """Record what the relay learned of HOST for wrappers and --show-hosts."""
    path = os.path.join(config.dir, "%s-%s" % (kind, host.key()))
    try:
        with open(path, "a" if append else "w") as f:
            f.write(text)
    except OSError as e:
        warn("cannot write %s: %s" % (path, e.strerror))


def read_host_note(config, host, kind):
    """Return what write_host_note recorded, or ""."""
    try:
        with open(os.path.join(config.dir, "%s-%s" % (kind, host.key()))) \
                as f:
            return f.read()
    except OSError:
        return ""


def backoff_path(config, host):
    return os.path.join(config.dir, "backoff-" + host.key())


def backed_off(config, host, probes):
    """Whether HOST is backed off.  Past its period, the first wrapper to ask
    takes the probe (into PROBES) and is told no; others await its verdict."""
    path = backoff_path(config, host)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    now = time.time()
    if now < st.st_mtime:
        return True                 # mtime is the end of the period
    probe = path + ".probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probes.append(host)
        return False                # this job probes the host
    except FileExistsError:
        try:
            stale = now - os.stat(probe).st_mtime > 2 * config.connect_timeout
        except FileNotFoundError:
            return False            # the probe just ended
        if stale:
            release_probe(config, host)
        return not stale


def mark_host_failed(config, host):
    """Back HOST off for DISTCC_BACKOFF_PERIOD, for every wrapper."""
    path = backoff_path(config, host)
    with open(path, "w") as f:
        f.write("%s\n" % host.spec)
    until = time.time() + config.backoff_period
    os.utime(path, (until, until))
    release_probe(config, host)


def release_probe(config, host):
    try:
        os.unlink(backoff_path(config, host) + ".probe")
    except FileNotFoundError:
        pass  # no probe was running, or another wrapper found it stale


def mark_host_good(config, host):
    """Forget a backoff of HOST after a job succeeded there."""
    try:
        os.unlink(backoff_path(config, host))
    except FileNotFoundError:
        pass  # the usual case: it was never backed off
    release_probe(config, host)
# ---------------------------------------------------------------------------
# Wrapper
#
# What the build runs: scan the command, take a slot, preprocess, send the
# job through the host's relay and write the object, or compile here.  Each
# wrapper keeps a line in $DISTCC_DIR/jobs/PID for --monitor and adds one
# per job to $DISTCC_DIR/stats: plain files, one writer each, no lock.


class Config:
    """Settings read once from the environment by main dispatch."""

    def __init__(self, environ):
        self.dir = os.path.abspath(environ.get(ENV_DIR) or
                                   os.path.expanduser("~/.distcc"))
        self.hosts_text = environ.get(ENV_HOSTS)
        self.ssh_text = environ.get(ENV_SSH) or "ssh"
        self.fallback = environ.get(ENV_FALLBACK, "1") != "0"
        self.skip_local_retry = environ.get(ENV_SKIP_LOCAL_RETRY, "0") \
            not in ("", "0")
        self.save_temps = environ.get(ENV_SAVE_TEMPS, "0") not in ("", "0")
        self.relay_timeout = env_seconds(environ, ENV_RELAY_TIMEOUT,
                                         DEFAULT_RELAY_TIMEOUT)
        self.connect_timeout = env_seconds(environ, ENV_CONNECT_TIMEOUT,
                                           DEFAULT_CONNECT_TIMEOUT)
        # 0 is distcc's "never back off".
        self.backoff_period = env_seconds(environ, ENV_BACKOFF_PERIOD,
                                          DEFAULT_BACKOFF_PERIOD, zero=True)
        self.io_timeout = env_seconds(environ, ENV_IO_TIMEOUT,
                                      DEFAULT_IO_TIMEOUT)
        self.job_timeout = env_seconds(environ, ENV_JOB_TIMEOUT,
                                       DEFAULT_JOB_TIMEOUT)

    @property
    def ssh_command(self):
        """DISTCC_SSH split with shlex (a property, so that wrappers never
        import shlex).  Raises UsageError on bad quoting."""
        import shlex
        try:
            argv = shlex.split(self.ssh_text)
        except ValueError as e:
            raise UsageError("cannot split %s: %s" % (ENV_SSH, e),
                             "check its quoting")
        if not argv:
            raise UsageError("%s is empty" % ENV_SSH, "unset it or name ssh")
        return argv

    def hosts(self):
        """Return the parsed host list (DISTCC_HOSTS, then the hosts file)."""
        if self.hosts_text is not None:
            return parse_hosts(self.hosts_text)
        path = os.path.join(self.dir, "hosts")
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError("cannot read %s: %s" % (path, getattr(
                e, "strerror", None) or "not UTF-8 text"), "fix or remove it")
        return parse_hosts(text)


def env_seconds(environ, name, default, zero=False):
    """Read a positive number of seconds (or 0, if ZERO) from NAME."""
    text = environ.get(name)
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1
    if not 0 <= value < float("inf") or value == 0 and not zero:
        raise UsageError("%s=%r is not a positive number of seconds"
                         % (name, text), "unset it or give seconds")
    return value


def find_program(name, _found={}):
    """Return the path of NAME as execvp would find it, or None."""
    if name not in _found:
        _found[name] = next(runnable_paths(name), None)
    return _found[name]


def runnable_paths(name):
    """Yield the paths execvp would try for NAME that it could run."""
    if "/" in name:
        if os.access(name, os.X_OK):
            yield os.path.abspath(name)
        return
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            yield path


def real_compiler(name):
    """Return NAME, or the first NAME on PATH that is not this program (so
    masquerade links never call themselves); raises UsageError if none."""
    me = os.path.realpath(__file__)
    first = find_program(name)
    if first is None or os.path.realpath(first) != me:
        return name
    if "/" in name:
        raise UsageError("%s is distcc.py itself" % name,
                         "give the real compiler's path")
    for path in runnable_paths(name):
        if os.path.realpath(path) != me:
            return path
    raise UsageError("no %s on PATH besides distcc.py itself" % name,
                     "install the compiler or fix PATH")


def wrapper_main(argv, config):
    """Compile ARGV remotely and return its status, or exec it here."""
    argv = [real_compiler(argv[0])] + argv[1:]
    state = hosts = None
    try:
        job = scan_args(expand_response_files(argv))
        try:
            hosts = config.hosts()
            if all(h.is_local for h in hosts):
                raise LocalOnly("no remote hosts")
            check_job_files(job)
            directory = state_dir(config)   # what follows relies on it
        except UsageError as e:
            config_error(config, e, job)
        state = JobState(directory, job.source)
        try:
            return compile_distributed(config, job, hosts, state)
        except LocalOnly as why:
            if not state.done:      # the preprocessor failed, say
                state.finish("local", why.detail)
            raise
        except UsageError as e:     # DISTCC_SSH, when a relay starts
            state.finish("local", "configuration error")
            config_error(config, e, job)
        except OSError as e:        # EMFILE, ENOSPC in DISTCC_DIR, ...
            state.finish("local", e.strerror)
            config_error(config, DistccError("%s: %s" % (
                e.filename, e.strerror) if e.filename else e.strerror), job)
        finally:
            if not state.done:
                state.finish("failed", "interrupted")
    except LocalOnly as why:
        reason = why.detail
    if state is None:               # count a local compile that tried no host
        try:
            state = JobState(state_dir(config), "-")
            state.finish("local", reason)
        except UsageError:
            pass  # the remote path reports it; a local compile goes on
    if state is not None:           # DISTCC_DIR is usable
        hold_local_slot(config, hosts)
    trace("local: %s: %s" % (reason, " ".join(argv)))
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(argv[0], argv)    # the compiler replaces this process
    except OSError as e:
        raise UsageError("cannot run %s: %s" % (argv[0], e.strerror),
                         "pass long command lines in an @file"
                         if e.errno == errno.E2BIG else
                         "is the compiler installed and on PATH?")


def config_error(config, error, job):
    """Warn and raise LocalOnly, or ERROR itself with DISTCC_FALLBACK=0: as
    in distcc, a bad host list, DISTCC_DIR or DISTCC_SSH stops no build."""
    if not config.fallback:
        raise error
    if not said_lately(config, str(error)):
        warn("%s; compiling %s locally (said once a build)"
             % (error, job.source))
    raise LocalOnly("configuration error: %s" % error.detail, job)


def said_lately(config, message):
    """True if a job of this login session said MESSAGE within the last
    minute (each quiet job renews the stamp): a build's jobs warn once."""
    try:
        base = state_dir(config)
    except UsageError:
        base = os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(base, "distcc.py-said-%d-%d-%08x" % (
        os.getuid(), os.getsid(0), zlib.crc32(message.encode())))
    try:
        st = os.lstat(path)
        if st.st_uid == os.getuid() and stat.S_ISREG(st.st_mode):
            os.utime(path, follow_symlinks=False)
            return time.time() - st.st_mtime < 60
    except OSError:
        pass  # not said yet, or not in a place we can keep a stamp
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # then every job says it
    return False


def hold_local_slot(config, hosts):
    """Wait for one of the --localslots=N of HOSTS (None: not read yet) and
    hold it across exec: at most N compiles run here, whatever make's -j."""
    if hosts is None:
        try:
            hosts = config.hosts()
        except UsageError:
            return  # a local compile still runs; the remote path reports it
    if not hosts.local_slots:
        return
    local = Host("local", "localhost", limit=hosts.local_slots)
    os.set_inheritable(acquire_slot(config, [local], "queue-local").fd, True)


def check_job_files(job):
    """Raise LocalOnly when the file system makes JOB a local compile (so
    a missing source or output directory gets the compiler's own error)."""
    if not os.path.isfile(job.source):
        raise LocalOnly("source %s does not exist" % job.source, job)
    if not os.path.isdir(os.path.dirname(job.output) or "."):
        raise LocalOnly("output directory of %s does not exist" % job.output,
                        job)
    try:
        st = os.stat(job.output)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        # /dev/null, a FIFO: a rename would replace it, not write into it.
        raise LocalOnly("output %s is not a regular file" % job.output, job)
    if os.path.samefile(job.source, job.output):
        raise LocalOnly("output %s is the source" % job.output, job)


def expand_response_files(argv, depth=0):
    """Expand @FILE arguments as gcc does (quotes, backslashes, nesting).
    An unreadable @FILE stays, as with gcc: the compile then stays local."""
    out = []
    for arg in argv:
        text = None
        if arg.startswith("@") and depth <= 10:
            try:
                with open(arg[1:], encoding="utf-8",
                          errors="surrogateescape") as f:
                    text = f.read()
            except OSError:
                pass  # it stays (and "@" alone names no file)
        out += [arg] if text is None else expand_response_files(
            split_response_text(text), depth + 1)
    return out


def split_response_text(text):
    """Split a response file's text into arguments, as libiberty does."""
    args, word, quote = [], None, None  # word: None between arguments
    chars = iter(text)
    for c in chars:
        if c == "\\":
            word = (word or "") + next(chars, c)
        elif c == quote:
            quote = None
        elif quote:
            word += c
        elif c in "'\"":
            quote, word = c, word or ""
        elif not c.isspace():
            word = (word or "") + c
        elif word is not None:
            args.append(word)
            word = None
    return args if word is None else args + [word]


def compile_distributed(config, job, hosts, state):
    """Compile JOB on the best host of HOSTS, the next after a fault, or
    here in a localhost slot; record the outcome in STATE, return the
    status.  Raises LocalOnly to compile here, or the last fault with
    DISTCC_FALLBACK=0 (or DISTCC_SKIP_LOCAL_RETRY=1 after a lost host)."""
    if hosts.randomize:
        import random
        random.shuffle(hosts)       # in place: it keeps its --options
    probes = []                     # hosts this job has the probe of
    candidates = [h for h in hosts
                  if h.is_local or not backed_off(config, h, probes)]
    prepared = fault = None
    relay_restarts = 0
    while candidates:
        state.set_phase("wait")
        slot = acquire_slot(config, candidates)
        host = slot.host
        for other in probes:
            if other is not host:   # let the next job probe it
                release_probe(config, other)
        probes = []
        try:
            reason = "localhost slot"
            if not host.is_local:
                trace("remote: %s on %s" % (job.source, host.spec))
                if prepared is None:
                    prepared = prepare_with_cpp_slot(config, hosts, job, state)
                status, local = compile_remote(config, job, hosts, host,
                                               prepared, state)
                mark_host_good(config, host)
                if local is None:
                    state.finish("remote", host=host.hostname)
                    return status
                slot.release()
                slot, reason = local, "taken back from %s" % host.hostname
            state.set_phase("local", "localhost")
            status = run_local(job.argv)
            state.finish("local", reason)
            return status
        except (TransportError, ProtocolError, Rejected) as e:
            fault = type(e)("%s: %s" % (host.hostname, e.detail), e.hint)
            if isinstance(e, RelayLost):
                # Our own relay died (killed, or exiting as we connected):
                # the host is not to blame; the next wrapper starts a relay.
                relay_restarts += 1
                if relay_restarts <= 2:
                    trace("%s; trying %s again" % (fault, host.spec))
                    continue
            elif not isinstance(e, Rejected):
                mark_host_failed(config, host)
        finally:
            slot.release()
        candidates.remove(host)
        if any(not h.is_local for h in candidates):
            # A compiler mismatch is a standing fact, not news: trace it.
            (trace if isinstance(fault, Rejected) else warn)(
                "%s; trying another host" % fault)
    if fault is None:
        state.finish("fallback" if config.fallback else "failed",
                     "every host backed off")
        if config.fallback:
            raise LocalOnly("every host is backed off")
        raise TransportError("every host is backed off",
                             "wait DISTCC_BACKOFF_PERIOD seconds or "
                             "remove %s/backoff-*" % config.dir)
    why = "%s fault on %s" % (fault.kind, host.hostname)
    lost = not isinstance(fault, Rejected)
    if not config.fallback or (lost and config.skip_local_retry):
        state.finish("failed", why)
        raise fault
    state.finish("fallback", why)
    warn("%s; compiling %s locally" % (fault, job.source))
    raise LocalOnly("no host could compile it")


def prepare_with_cpp_slot(config, hosts, job, state):
    """Preprocess JOB in a local preprocessing slot, timed in STATE."""
    cpp = Host("cpp", "localhost", limit=hosts.cpp_slots or
               os.cpu_count() or 2)
    slot = acquire_slot(config, [cpp], "queue-cpp")
    try:
        state.set_phase("preprocess")
        started = time.monotonic()
        prepared = prepare_job(job, config.save_temps)
    finally:
        slot.release()
    state.record["preprocess_ms"] = round((time.monotonic() - started) * 1000)
    return prepared


def prepare_job(job, save_temps=False):
    """Preprocess JOB here; return (meta, blobs, preprocessor stderr).
    Raises LocalOnly when the local compile should tell the story."""
    compiler_path = find_program(job.compiler)
    if compiler_path is None:
        raise LocalOnly("compiler %s not found here" % job.compiler)
    family = compiler_family(job.compiler)
    original = b""
    if job.lang in PREPROCESSED_LANGS:
        with open(job.source, "rb") as f:
            parts, cpp_err = [f.read()], b""
    else:
        argv = preprocess_argv(job)
        trace("preprocess: %s" % " ".join(argv))
        try:
            text, cpp_err, status = run_captured(compiler_path, argv)
        except OSError as e:        # E2BIG from an @file, say
            raise LocalOnly("cannot preprocess: %s" % e.strerror)
        if status != 0:
            raise LocalOnly("preprocessing failed")
        parts = strip_builtins(text)
        if family == "gcc":
            parts[-1:] = restore_defines(bytes(parts[-1]))
            with open(job.source, "rb") as f:
                original = f.read()
    if save_temps:
        save_preprocessed(job, parts)
    squeeze = zlib.compressobj(COMPRESS_LEVEL)
    packed = b"".join([squeeze.compress(p) for p in parts] + [squeeze.flush()])
    meta = dict(
        compiler=os.path.basename(job.compiler), compiler_path=compiler_path,
        family=family, args=job.remote_args, mode=job.mode, cwd=os.getcwd(),
        lang=job.explicit_lang, source=job.source, output=job.output,
        env={k: os.environ[k] for k in FORWARDED_ENV if k in os.environ},
        color=color_wanted(job), raw=sum(len(p) for p in parts))
    return meta, [packed, zlib.compress(original, COMPRESS_LEVEL)], cpp_err


def restore_defines(text):
    """Return the parts of gcc's -fdirectives-only TEXT with each #define
    as its file spells it, where its lines fit.

    gcc prints a #define canonically (no space after a parameter comma,
    continuations joined, comments dropped), padded with empty lines to the
    lines it took: locations in a macro body move (a warning's column, -g
    line tables).  The line markers name each one's file and line; those of
    system headers (flag 3) stay: thousands, and gcc is quiet about them."""
    out, files = [], {}
    name, line = None, 0           # file and line of the line at START
    start = done = 0
    while True:
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end
        if text.startswith(b"# ", start):
            number, _, quoted = text[start + 2:end].partition(b" ")
            if number.isdigit() and quoted.startswith(b'"'):
                close = quoted.rfind(b'"')
                name, line = quoted[1:close], int(number) - 1
                if b"3" in quoted[close + 1:].split() or name.startswith(b"<"):
                    name = None     # a system header, or <built-in>
        elif text.startswith(b"#define ", start) and name:
            if name not in files:
                try:
                    with open(os.fsdecode(name), "rb") as f:
                        files[name] = f.read().splitlines(True)
                except OSError:
                    files[name] = []
            lines, i = files[name], line - 1
            n = directive_lines(lines, i)
            if n and text[end + 1:end + n] == b"\n" * (n - 1) and \
                    macro_name(lines[i]) == macro_name(text[start:end]):
                spelled = b"".join(lines[i:i + n])
                out += [text[done:start], spelled.rstrip(b"\n") + b"\n"]
                done = end + n
                end = done - 1
        # The next "#" starting a line (only a marker, in a system header):
        # find() of 1 byte runs at memchr's speed, of 2 bytes 10 times slower.
        nxt = end
        while True:
            nxt = text.find(b"#", nxt + 1)
            if nxt < 0 or text[nxt - 1] == 10 and (
                    name or text.startswith(b"# ", nxt)):
                break
        if nxt < 0:
            break
        if name:                    # (a marker sets the line anew)
            line += text.count(b"\n", start, nxt)
        start = nxt
    return out + [text[done:]]


def directive_lines(lines, i):
    """How many of LINES the directive at index I spans (backslash
    continuations, a block comment left open); 0 if there is none."""
    j, depth = i, 0
    while 0 <= j < len(lines):
        depth += lines[j].count(b"/*") - lines[j].count(b"*/")
        j += 1
        if depth <= 0 and not lines[j - 1].rstrip(b"\r\n").endswith(b"\\"):
            return j - i
    return 0


def macro_name(line):
    """The name that a #define line defines, or None."""
    words = line.lstrip(b" \t#").split(None, 1)
    if len(words) < 2 or words[0] != b"define":
        return None
    name = words[1]
    for i, c in enumerate(name):
        if not (c == 95 or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122):
            return name[:i]
    return name


def run_captured(path, argv):
    """Run PATH with ARGV, stdin /dev/null; return (stdout, stderr, status)."""
    # posix_spawn: importing subprocess costs the wrapper 10 ms a compile.
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    child = (os.open(os.devnull, os.O_RDONLY), out_w, err_w)  # fds 0, 1, 2
    output = {out_r: [], err_r: []}
    try:
        try:
            pid = os.posix_spawn(path, argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(child)])
        finally:
            for fd in child:
                os.close(fd)
        open_fds = [out_r, err_r]
        while open_fds:
            for fd in select.select(open_fds, [], [])[0]:
                data = os.read(fd, 1 << 20)
                output[fd].append(data)
                if not data:
                    open_fds.remove(fd)
    finally:
        for fd in output:
            os.close(fd)
    status = exit_status(os.waitpid(pid, 0)[1])
    return b"".join(output[out_r]), b"".join(output[err_r]), status


def exit_status(wait_status):
    """The exit code of a waitpid status, or minus the killing signal."""
    return -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else \
        os.WEXITSTATUS(wait_status)


def save_preprocessed(job, parts):
    """DISTCC_SAVE_TEMPS: keep what is sent to the host, and say where."""
    path = os.path.join(os.environ.get("TMPDIR") or "/tmp", "distcc.py-%d-%s"
                        % (os.getpid(), os.path.basename(job.source)))
    try:
        with open(path, "wb") as f:
            f.writelines(parts)
        warn("DISTCC_SAVE_TEMPS: the text sent for %s is in %s"
             % (job.source, path))
    except OSError as e:
        warn("DISTCC_SAVE_TEMPS: cannot write %s: %s" % (path, e.strerror))


def color_wanted(job):
    """Whether a local compile would colour its diagnostics."""
    if any(arg.startswith(("-fdiagnostics-color", "-fno-diagnostics-color",
                           "-fcolor-diagnostics", "-fno-color-diagnostics"))
           for arg in job.argv):
        return False  # the user chose; the option travels as it is
    return os.environ.get("GCC_COLORS") != "" and \
        os.environ.get("TERM") != "dumb" and os.isatty(2)


def compile_remote(config, job, hosts, host, prepared, state):
    """Compile the PREPARED job on HOST, sizes and times going to STATE;
    return (its status, None), or (None, a localhost Slot) if taken back.
    Raises TransportError, ProtocolError or Rejected for the fallback."""
    meta, blobs, cpp_err = prepared
    meta = dict(meta, save_temps=config.save_temps)
    sent = sum(len(b) for b in blobs)
    trace("send %s to %s: %d bytes, %d compressed"
          % (job.source, host.hostname, meta["raw"], sent))
    state.set_phase("send", host.hostname)
    started = time.monotonic()
    local_hosts = [h for h in hosts if h.is_local and not config.save_temps]
    body, local = send_job(config, host, pack_body(meta, blobs, MARSHAL),
                           state, local_hosts)
    if body is None:
        trace("%s: taken back from %s's queue" % (job.source, host.hostname))
        return None, local
    result, got = unpack_body(body, MARSHAL)
    extra = collect_extra_files(result.get("missing"), blobs[0])
    if extra:
        # gcc there quoted headers it lacks; with them its output matches ours.
        trace("resend %s with %d headers for diagnostics"
              % (job.source, len(extra)))
        meta["extra"] = [name for name, _ in extra]
        body, _ = send_job(config, host, pack_body(
            meta, blobs + [data for _, data in extra], MARSHAL), state)
        result, got = unpack_body(body, MARSHAL)
    round_trip = time.monotonic() - started
    status, outputs = result.get("status"), result.get("outputs")
    if not isinstance(status, int) or not isinstance(outputs, list) or \
            len(got) != 2 + len(outputs):
        raise ProtocolError("malformed RESULT")
    if b"-Wformat" in bytes(got[1]):
        # gcc points into a format string (the "defined here" note) only
        # in input without line markers (input.c, "seen line directive").
        raise LocalOnly("a -Wformat warning: its notes need the source")
    if config.save_temps and isinstance(result.get("temps"), str):
        warn("DISTCC_SAVE_TEMPS: the job's files are kept in %s:%s" % (
            host.hostname, clean_output(result["temps"].encode()).decode()))
    compile_ms = result.get("compile_ms")
    compile_ms = compile_ms if isinstance(compile_ms, int) else 0
    state.record.update(
        preprocessed=meta["raw"], sent=sent, compile_ms=compile_ms,
        received=sum(len(b) for b in got[2:]),
        transfer_ms=max(0, round(round_trip * 1000) - compile_ms))
    started = time.monotonic()
    if status == 0:
        # Side files first, the object last: make judges by the object.
        paths = {"output": job.output}
        if "-gsplit-dwarf" in job.remote_args:  # a host adds nothing else
            paths["dwo"] = replace_suffix(job.output, ".dwo")
        names = [str(o.get("name")) if isinstance(o, dict) else None
                 for o in outputs]
        if "output" not in names or not set(names) <= set(paths) or \
                len(set(names)) != len(names):
            raise ProtocolError(("RESULT has outputs %r" % (names,))[:200])
        for name, blob in sorted(zip(names, got[2:]),
                                 key=lambda pair: pair[0] == "output"):
            data = decompress(blob)
            state.record["objects"] += len(data)
            try:
                write_output(paths[name], data)
            except OSError as e:
                # A read-only or full disk: the local compiler reports it.
                raise LocalOnly("cannot write %s: %s" % (paths[name],
                                                         e.strerror))
    sys.stderr.buffer.write(cpp_err)
    sys.stderr.buffer.write(clean_output(got[1]))
    sys.stdout.buffer.write(clean_output(got[0]))
    state.record["write_ms"] = round((time.monotonic() - started) * 1000)
    trace("%s compiled on %s: status %d" % (job.source, host.hostname, status))
    return status, None


def send_job(config, host, parts, state, local_hosts=()):
    """Send a JOB (body PARTS) to HOST through its relay and wait; return
    (RESULT body, None), or (None, a Slot of LOCAL_HOSTS) when taken back.
    Raises TransportError (silent relay, idle compiler, job timeout),
    RelayLost, ProtocolError or Rejected (what the relay or host says)."""
    slots = os.path.join(config.dir, "slots")
    s = connect_relay(config, host)
    try:
        silence = config.connect_timeout + config.io_timeout
        silent = TransportError("the relay said nothing for %d s" % silence,
                                "is it stopped? distcc.py --stop ends it, "
                                "and the next job starts one")
        s.settimeout(silence)
        try:
            for part in [frame_parts(JOB, 0, parts)] + parts:
                s.sendall(part)
        except OSError as e:
            raise RelayLost("relay connection failed: %s" % e)
        state.set_phase("compile", host.hostname)
        heard = moved = now = time.monotonic()  # last frame, last CPU use
        deadline = now + config.job_timeout
        phase, cpu = "compile", None
        while True:
            wait = TAKE_BACK_POLL if phase == "queue" and local_hosts \
                else PROGRESS_INTERVAL
            ready = select.select([s], [], [], wait)[0]
            now = time.monotonic()
            if ready:
                heard = now
                try:
                    frame = read_frame(SocketReader(s))
                except _socket.timeout:
                    raise silent
                except (OSError, ProtocolError) as e:
                    raise RelayLost("relay connection failed: %s" % e)
                if frame is None:
                    raise RelayLost("the relay closed the connection without "
                                    "an answer")
                kind, _, body = frame
                if kind == ERROR:
                    raise_error_body(body, MARSHAL)
                if kind == RESULT:
                    return body, None
                if kind != PROGRESS:
                    raise ProtocolError("expected RESULT, got %s"
                                        % FRAME_NAMES[kind])
                progress = load_meta(body, MARSHAL) if body else {}
                if progress.get("state") in ("queue", "compile") and \
                        progress["state"] != phase:
                    phase, cpu, moved = progress["state"], None, now
                    state.set_phase(phase, host.hostname)
                used = progress.get("cpu")
                if isinstance(used, (int, float)) and \
                        (cpu is None or used > cpu):
                    cpu, moved = used, now
            elif now - heard > silence:
                raise silent
            if phase == "compile" and cpu is not None and \
                    now - moved > config.io_timeout:
                raise TransportError(
                    "the compiler on %s has used no CPU for %d s"
                    % (host.hostname, config.io_timeout),
                    "is it stopped, or waiting for input?")
            if now > deadline:
                raise TransportError("no answer in %d s" % config.job_timeout,
                                     "raise %s for longer compiles"
                                     % ENV_JOB_TIMEOUT)
            if phase == "queue" and local_hosts and not others_queued(slots):
                slot = take_free_slot(config, slots, local_hosts)
                if slot is not None:
                    return None, slot   # closing s cancels the host's job
    finally:
        s.close()


class SocketReader:
    """A socket as read_frame's file, timeout kept (fdopen's would lose it)."""

    def __init__(self, sock):
        self.read = sock.recv


def collect_extra_files(names, packed):
    """Return [(name, compressed contents)] of the files NAMES (a server's
    'missing' list) that the job's text PACKED included, within limits."""
    if not isinstance(names, list) or not names:
        return []
    # A host may ask for anything; the line markers name what was included.
    import re
    included = set(re.findall(rb'(?m)^# [0-9]+ "([^"]*)"',
                              zlib.decompress(packed)))
    extra, total = [], 0
    for name in names[:MAX_EXTRA_FILES]:
        if not isinstance(name, str) or \
                name.encode("utf-8", "surrogateescape") not in included or \
                not os.path.isfile(name):
            continue
        try:
            with open(name, "rb") as f:
                data = f.read(MAX_EXTRA_BYTES + 1)
        except OSError:
            continue  # unreadable here too: the diagnostic stays as it is
        total += len(data)
        if total > MAX_EXTRA_BYTES:
            break
        extra.append((name, zlib.compress(data, COMPRESS_LEVEL)))
    return extra


def clean_output(data):
    """Return a host compiler's output DATA with every control character
    but tab, newline and colour (SGR, and EL as gcc uses it) made "?"."""
    # A host may send anything to a terminal.
    plain = bytes([9, 10, *range(32, 127), *range(128, 256)])
    if not bytes(data).translate(None, plain):
        return data
    import re
    return re.sub(rb"\x1b\[[0-9;]*[mK]|[\x00-\x1f\x7f]", lambda m: m.group()
                  if len(m.group()) > 1 or m.group() in b"\t\n" else b"?",
                  bytes(data))


def write_output(path, data):
    """Write DATA to PATH atomically: a temp name beside it, then rename."""
    tmp = os.path.join(os.path.dirname(path) or ".", ".%s.%d.%s.tmp" % (
        os.path.basename(path), os.getpid(), os.urandom(3).hex()))
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # never created or already renamed
        raise


def run_local(argv):
    """Run the local compiler at LOCAL_SLOT_NICE; return its status."""
    trace("local slot: %s" % " ".join(argv))
    try:
        path = find_program(argv[0])
        if path is None:
            raise FileNotFoundError(errno.ENOENT, "not found")
        # The compiler inherits the nice; this wrapper only waits for it.
        os.nice(LOCAL_SLOT_NICE)
        pid = os.posix_spawn(path, argv, os.environ)
        return exit_status(os.waitpid(pid, 0)[1])
    except OSError as e:
        raise UsageError("cannot run %s: %s" % (argv[0], e.strerror),
                         "pass long command lines in an @file"
                         if e.errno == errno.E2BIG else
                         "is the compiler installed and on PATH?")


PHASES = ("wait", "preprocess", "send", "queue", "compile", "local")
STATS_LIMIT = 4 * 1024 * 1024        # bytes before stats becomes stats.old
STATS_FIELDS = ("time", "host", "outcome", "preprocessed", "sent",
                "objects", "received", "preprocess_ms", "transfer_ms",
                "compile_ms", "write_ms", "reason")
OUTCOMES = ("remote", "local", "fallback", "failed")


class JobState:
    """This wrapper's line in $DISTCC_DIR/jobs, and its record for stats."""

    def __init__(self, directory, source):
        self.directory = directory      # the checked DISTCC_DIR
        # As the command line spells it, minus what would break the line.
        self.source = source.replace("\t", " ").replace("\n", " ")
        self.started = time.time()
        self.path = os.path.join(directory, "jobs", str(os.getpid()))
        self.fd = None                  # the open jobs/PID file, if any
        self.done = False               # finish() has run
        self.record = dict.fromkeys(STATS_FIELDS, 0)  # the line for stats

    def set_phase(self, phase, host="-"):
        """Show PHASE (and HOST) in --monitor."""
        text = "%-10s\t%.3f\t%s\t%s\n" % (phase, self.started, host,
                                          self.source)
        line = text.encode("utf-8", "surrogateescape")
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT |
                                  os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            os.pwrite(self.fd, line, 0)
            os.ftruncate(self.fd, len(line))
        except OSError:
            pass  # monitoring is best effort; the compile goes on

    def finish(self, outcome, reason="", host="localhost"):
        """Append how the job ended to the stats; drop its state line."""
        self.done = True
        self.record.update(time=round(time.time(), 3), outcome=outcome,
                           host=host, reason=" ".join(str(reason).split()))
        line = "\t".join(str(self.record[k]) for k in STATS_FIELDS) + "\n"
        # One write, so that lines of concurrent wrappers never interleave.
        path = os.path.join(self.directory, "stats")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT |
                         os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, line.encode("utf-8", "surrogateescape"))
                if os.fstat(fd).st_size > STATS_LIMIT:
                    os.replace(path, path + ".old")
            finally:
                os.close(fd)
        except OSError:
            pass  # statistics must never fail a build
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            try:
                os.unlink(self.path)
            except OSError:
                pass  # already swept as stale by a reader
# ---------------------------------------------------------------------------
# Relay and transport
#
# One relay per host: it takes a lockfile, binds a Unix socket in
# $DISTCC_DIR, detaches, and multiplexes every wrapper's JOB (renumbered),
# the host's PROGRESS and its answer over one ssh session; a wrapper that
# hangs up has its job CANCELled.  If ssh dies, the jobs in flight get a
# transport ERROR (their wrappers compile locally) and the next job starts
# a new session.  Wrappers call connect_relay(), which hides the rest.


def state_dir(config):
    """Create $DISTCC_DIR (0700) with its slots/ and jobs/; return its path.
    Raises UsageError if it is not ours or others can write to it."""
    path = config.dir
    own = "set DISTCC_DIR to a directory you own"
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise UsageError("cannot create %s: %s" % (path, e.strerror), own)
    if st.st_uid != os.getuid():
        raise UsageError("%s belongs to uid %d, not to you"
                         % (path, st.st_uid), own)
    if st.st_mode & 0o022:
        raise UsageError("%s is writable by others (mode %o)"
                         % (path, st.st_mode & 0o777),
                         "run chmod 700 %s" % path)
    for sub in (os.path.join(path, "slots"), os.path.join(path, "jobs")):
        try:
            if not os.path.isdir(sub):          # one stat each, every job
                os.makedirs(sub, 0o700, exist_ok=True)
        except OSError as e:
            raise UsageError("cannot create %s: %s" % (sub, e.strerror),
                             "fix or remove it")
    return path


def relay_paths(config, host):
    """Return (socket path, lock path) of HOST's relay."""
    base = os.path.join(config.dir, "relay-" + host.key())
    sock = base + ".sock"
    if len(sock.encode()) > SOCKET_PATH_LIMIT:
        raise UsageError("DISTCC_DIR %s is too long for a Unix socket path"
                         % config.dir, "use a shorter DISTCC_DIR")
    return sock, base + ".lock"


def connect_relay(config, host):
    """Return a socket connected to HOST's relay, starting it if needed.
    Raises TransportError if no relay answers within a few seconds."""
    # _socket, the C core of socket: socket imports enum (4 ms a compile).
    sock_path, lock_path = relay_paths(config, host)
    deadline, delay = time.monotonic() + 10.0, 0.005
    while True:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.settimeout(config.connect_timeout)   # a full backlog blocks
        try:
            s.connect(sock_path)
            return s
        except OSError as e:
            s.close()
            if isinstance(e, _socket.timeout):
                raise TransportError("the relay at %s accepts no connection"
                                     % sock_path, "is it stopped? distcc.py "
                                     "--stop ends it")
            if e.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise TransportError("cannot reach the relay at %s: %s"
                                     % (sock_path, e.strerror))
        if time.monotonic() > deadline:
            raise TransportError("no relay for %s answers on %s"
                                 % (host.spec, sock_path))
        start_relay(config, host, sock_path, lock_path)
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def start_relay(config, host, sock_path, lock_path):
    """Start HOST's relay as `distcc.py --relay` (so named in ps) unless
    another process is starting or running it: in / (so umount works), in
    its own session, without the build's descriptors (make waits on them).
    Raises UsageError for a bad DISTCC_SSH here, where the build sees it."""
    ssh = config.ssh_command
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            return  # another wrapper is starting it, or it runs
        import shlex
        import socket
        import subprocess
        env = dict(os.environ, DISTCC_PYTHON=sys.executable, **{
            ENV_DIR: config.dir, ENV_SSH: shlex.join(absolute_ssh(ssh))})
        if Log.path:
            env[ENV_LOG] = os.path.abspath(Log.path)
        # We hold the lock, so no live relay owns a socket found here.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(sock_path) == 0:
                raise TransportError("a relay answers on %s without holding "
                                     "its lock" % sock_path)
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass  # nothing stale to remove
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            old = os.umask(0o177)
            try:
                listener.bind(sock_path)
            finally:
                os.umask(old)
            listener.listen(128)
            fds = (listener.fileno(), fd)
            null = subprocess.DEVNULL
            # relay_main forks at once: no zombie, no "still running" warning.
            subprocess.call(["/bin/sh", os.path.realpath(__file__),
                             "--relay", host.spec] + [str(n) for n in fds],
                            stdin=null, stdout=null, stderr=null, cwd="/",
                            env=env, pass_fds=fds, start_new_session=True)
    finally:
        os.close(fd)


def absolute_ssh(argv):
    """Return ARGV with the files of ssh's -F, -i and -E made absolute."""
    argv = list(argv)
    for i, arg in enumerate(argv[1:], 1):
        if arg[:2] in ("-F", "-i", "-E") and len(arg) > 2:
            argv[i] = arg[:2] + os.path.abspath(arg[2:])
        elif argv[i - 1] in ("-F", "-i", "-E"):
            argv[i] = os.path.abspath(arg)
    return argv


def relay_main(config, args):
    """The relay start_relay started (`--relay SPEC LISTEN_FD LOCK_FD`)."""
    if os.fork():
        os._exit(0)                 # start_relay waits for this parent
    import socket
    host = parse_host(args[0])
    listener, lock_fd = socket.socket(fileno=int(args[1])), int(args[2])
    gc.enable()                     # long-lived: the launcher turned it off
    Log.role = "relay"
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, b"%d\n" % os.getpid())
    relay = Relay(host, config, listener)
    import signal
    # SIGTERM (distcc.py --stop) ends serve() through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    trace("relay for %s listening on %s" % (host.spec, listener.getsockname()))
    stopped = False
    try:
        relay.serve()
    except SystemExit:
        stopped = True
    except Exception as e:  # noqa: BLE001  a detached relay reports and ends
        warn("relay for %s failed: %s" % (host.spec, e))
    finally:
        relay.shutdown()
        if stopped:
            import subprocess
            argv = build_ssh_argv(config.ssh_command, host, config.dir)
            argv[argv.index("--"):] = ["-O", "exit", host.hostname]
            subprocess.call(argv, stdout=subprocess.DEVNULL, timeout=10,
                            stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        trace("relay for %s exits" % host.spec)


def hung_up(sock):
    """Whether SOCK's peer has closed it, not just shut its writing half."""
    poller = select.poll()
    poller.register(sock, select.POLLHUP)    # POLLERR comes unasked
    return bool(poller.poll(0))


class Relay:
    """The relay for one host: the listening socket and its session."""

    def __init__(self, host, config, listener):
        import threading
        self.host, self.config = host, config
        self.listener = listener       # bound, listening Unix socket
        self.lock = threading.Lock()   # guards active and mismatches
        self.connect_lock = threading.Lock()   # one ssh start at a time
        self.session = None            # the live Session, or None
        self.connect_failure = None    # (monotonic time, message) or None
        self.mismatches = set()        # (session, compiler) already noted
        self.active = 0                # wrappers being served now
        self.local_identities = {}     # (path, mtime) -> identity

    def get_session(self):
        """Return a live session, starting ssh if there is none."""
        config, host = self.config, self.host
        with self.connect_lock:
            if self.session is not None and self.session.failure is None:
                return self.session
            # Queued jobs fail at once rather than each retry a dead host.
            if self.connect_failure and time.monotonic() - \
                    self.connect_failure[0] < RELAY_RECONNECT_DELAY:
                raise TransportError(self.connect_failure[1])
            argv = build_ssh_argv(config.ssh_command, host, config.dir)
            trace("connecting: %s" % " ".join(argv))
            try:
                self.session = Session(argv, config)
            except TransportError as e:
                self.connect_failure = (time.monotonic(), e.detail)
                raise
            write_host_note(config, host, "cpus",
                            "%s\n" % (self.session.cpus or ""))
            write_host_note(config, host, "mismatch", "")
            trace("connected to %s (server %s)"
                  % (host.hostname, self.session.server_version))
            return self.session

    def check_compiler(self, session, meta):
        """Raise Rejected unless the host's compiler for META is ours."""
        compiler, path = meta.get("compiler"), meta.get("compiler_path")
        theirs = session.identity(compiler)
        try:
            key = (path, os.stat(path).st_mtime)
        except (OSError, TypeError, ValueError):    # or not a path at all
            raise Rejected("local compiler %s has gone" % path)
        ours = self.local_identities.get(key) or compiler_identity(path)
        self.local_identities[key] = ours
        if theirs == ours:
            return
        with self.lock:
            noted = (session, compiler) in self.mismatches
            self.mismatches.add((session, compiler))
        differs = "%s there, %s here" % tuple(
            s.replace("\n", ", ") for s in (theirs, ours))
        if not noted:               # once per session, for --show-hosts
            write_host_note(self.config, self.host, "mismatch",
                            "%s: %s\n" % (compiler, differs), append=True)
        raise Rejected("%s on %s differs from the local one (%s)"
                       % (compiler, self.host.hostname, differs))

    def serve_wrapper(self, conn):
        """Forward one wrapper's job, the host's PROGRESS and the answer."""
        try:
            if hasattr(_socket, "SO_PEERCRED"):  # struct ucred: pid, uid, gid
                creds = conn.getsockopt(_socket.SOL_SOCKET,
                                        _socket.SO_PEERCRED, 12)
                uid = int.from_bytes(creds[4:8], sys.byteorder)
                if uid != os.getuid():
                    warn("refused a connection from uid %d" % uid)
                    return
            out = conn.makefile("wb")
            try:
                try:
                    frame = read_frame(conn.makefile("rb"))
                except ProtocolError as e:
                    raise ProtocolError(str(e))   # "protocol: ..." as sent
                if frame is None:
                    return
                kind, _, body = frame
                if kind != JOB:
                    raise ProtocolError("expected a JOB frame")
                # The blobs pass through as views, never copied.
                meta, blobs = unpack_body(body, MARSHAL)
                session = self.get_session()
                self.check_compiler(session, meta)
                job_id, frames = session.start(JOB, pack_body(meta, blobs))
                kind, answer = session.wait(
                    JOB, frames, lambda p: write_frame(out, PROGRESS, 0, p),
                    gone=lambda: hung_up(conn))
                if kind is None:
                    trace("job %d: its wrapper is gone; cancelled" % job_id)
                    session.cancel(job_id)
                    return
                if kind == ERROR:
                    raise_error_body(answer)    # as marshal, below
                answer = pack_body(*unpack_body(answer), MARSHAL)
            except (TransportError, ProtocolError, Rejected) as e:
                kind, answer = ERROR, error_body(e.kind, e.detail, MARSHAL)
            write_frame(out, kind, 0, answer)
        except (OSError, ValueError):
            pass  # the wrapper went away; nothing is waiting for the answer
        finally:
            conn.close()
            with self.lock:
                self.active -= 1

    def spawn(self, conn):
        import threading
        conn.settimeout(None)
        with self.lock:
            self.active += 1
        threading.Thread(target=self.serve_wrapper, args=(conn,),
                         daemon=True).start()

    def serve(self):
        """Accept wrappers until idle for the relay timeout."""
        self.listener.settimeout(1.0)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since <= self.config.relay_timeout:
            try:
                self.spawn(self.listener.accept()[0])
                idle_since = time.monotonic()
            except _socket.timeout:
                if self.active:
                    idle_since = time.monotonic()
            except OSError as e:
                if e.errno != errno.ECONNABORTED:  # EINTR is retried
                    raise

    def shutdown(self):
        """Stop taking wrappers, serve those already queued, close ssh."""
        try:
            os.unlink(self.listener.getsockname())
        except FileNotFoundError:
            pass  # a wrapper-side cleanup got there first
        self.listener.setblocking(False)
        try:
            while True:
                self.spawn(self.listener.accept()[0])
        except OSError:
            pass  # the backlog is empty
        self.listener.close()
        while self.active:
            time.sleep(0.05)
        if self.session is not None:
            self.session.close()


def relay_stop(config):
    """Stop every relay in DISTCC_DIR (by the pid in its lockfile) and its
    ssh master, and forget every backoff; return how many stopped."""
    import glob
    import signal
    stopped = 0
    for lock in glob.glob(os.path.join(config.dir, "relay-*.lock")):
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            continue                # no relay: its pid may be anybody's
        except OSError:
            pid = os.pread(fd, 32, 0).strip()
        finally:
            os.close(fd)
        if pid.isdigit() and int(pid) > 0:
            try:
                os.kill(int(pid), signal.SIGTERM)
                stopped += 1
            except ProcessLookupError:
                pass  # ended meanwhile
    for path in glob.glob(os.path.join(config.dir, "backoff-*")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # a wrapper forgot it first
    return stopped


def build_ssh_argv(ssh_command, host, control_dir):
    """Return the argv that runs the server on HOST over ssh."""
    import shlex
    # Never prompt for a password or a host key in the middle of a build.
    argv = list(ssh_command) + ["-o", "BatchMode=yes"]
    # One ControlMaster per host (a new relay skips the handshake) if ssh's
    # socket fits: PATH.<16 random characters>, with %C a 40-character hash.
    path = os.path.join(control_dir, "cm-%C")
    if len(path.encode("utf-8", "surrogateescape")) - 2 + 40 + 17 > \
            SOCKET_PATH_LIMIT:
        trace("no ssh ControlMaster: %s is too long a directory for its "
              "socket; a shorter DISTCC_DIR lets relays share one"
              % control_dir)
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    else:
        if any(c.isspace() for c in path):
            path = '"%s"' % path    # ssh splits an option's value at blanks
        argv += ["-o", "ControlMaster=auto", "-o", "ControlPath=" + path,
                 "-o", "ControlPersist=" + CONTROL_PERSIST]
    argv += [
        # Notice a dead peer instead of waiting on it forever.
        "-o", "ServerAliveInterval=" + SERVER_ALIVE_INTERVAL,
        "-o", "ServerAliveCountMax=3",
        # We compress with zlib ourselves; doing it twice wastes CPU.
        "-o", "Compression=no", "-T", "-e", "none"]
    if host.user:
        argv += ["-l", host.user]
    command = shlex.quote(host.command or DEFAULT_REMOTE_COMMAND) + " -i"
    return argv + ["--", host.hostname, command]


class Session:
    """One ssh process running the server, and the jobs in flight on it."""

    def __init__(self, argv, config):
        import subprocess
        import threading
        self.config = config          # its connect and I/O timeouts
        self.lock = threading.Lock()
        self.pending = {}             # job id -> queue of its frames
        self.next_id = 1
        self.failure = None           # message once the session is dead
        self.stderr_tail = []         # last lines ssh printed
        self.write_lock = threading.Lock()
        self.identity_lock = threading.Lock()  # one QUERY per compiler
        self.identities = {}          # compiler name -> identity, or error
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
        except OSError as e:
            raise TransportError("cannot run %s: %s" % (argv[0], e.strerror),
                                 "check DISTCC_SSH")
        threading.Thread(target=self.read_stderr, daemon=True).start()
        timer = threading.Timer(config.connect_timeout, self.proc.kill)
        timer.start()
        try:
            self.server_version, self.cpus, self.sandbox = find_banner(
                self.proc.stdout)
        except TransportError:
            self.proc.wait()
            raise TransportError(self.exit_message())
        except ProtocolError:
            self.close()
            raise
        finally:
            timer.cancel()
        self.last_heard = time.monotonic()
        threading.Thread(target=self.read_frames, daemon=True).start()

    def read_stderr(self):
        for line in self.proc.stderr:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self.stderr_tail = (self.stderr_tail + [text])[-5:]
                trace("ssh: " + text)

    def exit_message(self):
        """Describe why the ssh process ended, with ssh's own words."""
        import subprocess
        try:
            status = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            status = None   # its stdout closed, it runs on: close() kills it
        for _ in range(20):        # let the stderr thread catch up
            if self.stderr_tail or status is None:
                break
            time.sleep(0.01)
        what = describe_exit(status, "ssh") if status is not None \
            else "ssh session closed"
        if status in (126, 127):
            what += "; is distcc.py installed and executable on the host? " \
                    "use @host:/path/to/distcc.py"
        if self.stderr_tail:
            what += ": " + " / ".join(self.stderr_tail[-2:])
        return what

    def read_frames(self):
        try:
            for kind, job_id, body in iter(
                    lambda: read_frame(self.proc.stdout), None):
                with self.lock:
                    self.last_heard = time.monotonic()
                    frames = self.pending.get(job_id) if kind == PROGRESS \
                        else self.pending.pop(job_id, None)
                if frames is not None:
                    frames.put((kind, body))
                elif kind == ERROR:     # of a job cancelled, or heard of late
                    warn("session error: %s" % bytes(body)[:200])
        except (ProtocolError, OSError, ValueError) as e:
            self.fail("bad stream from the server: %s" % e)
            return
        self.fail(self.exit_message())

    def fail(self, message):
        """Mark the session dead and fail every job in flight."""
        with self.lock:
            self.failure = self.failure or message
            pending, self.pending = self.pending, {}
        for frames in pending.values():
            frames.put((ERROR, error_body("transport", message)))
        self.close()

    def close(self):
        """Close ssh's stdin, then kill and reap it."""
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass  # already closed or broken: we are ending it anyway
        import subprocess
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def call(self, kind, parts, timeout=None):
        """Send one frame and wait() for its answer; return (type, body).
        Raises TransportError if the session is dead."""
        return self.wait(kind, self.start(kind, parts)[1], timeout=timeout)

    def start(self, kind, parts):
        """Send the frame that starts a job; return (job id, the queue of
        its frames).  Raises TransportError if the session is dead."""
        import queue
        frames = queue.SimpleQueue()
        with self.lock:
            if self.failure is not None:
                raise TransportError(self.failure)
            if not self.pending:
                # A build may pause past the I/O timeout between jobs.
                self.last_heard = time.monotonic()
            job_id, self.next_id = self.next_id, self.next_id % 0xFFFFFFFE + 1
            self.pending[job_id] = frames
        self.send(kind, job_id, parts)
        return job_id, frames

    def send(self, kind, job_id, parts):
        try:
            with self.write_lock:
                write_frame(self.proc.stdin, kind, job_id, parts)
        except (OSError, ValueError) as e:
            self.fail("cannot write to ssh: %s" % e)

    def wait(self, kind, frames, tell=None, timeout=None, gone=None):
        """Return the (type, body) answer from queue FRAMES, or (None, None)
        once GONE() is true or TELL fails; TELL gets each PROGRESS, and an
        empty one every PROGRESS_INTERVAL of silence.  Fails the session past
        TIMEOUT, or the I/O timeout of silence (a stopped or wedged host)."""
        import queue
        now = time.monotonic()
        deadline = now + (float("inf") if timeout is None else timeout)
        beat = now + PROGRESS_INTERVAL
        while True:
            wait = min(beat, deadline, now + HANGUP_POLL) - now
            try:
                got, body = frames.get(timeout=max(0.0, wait))
            except queue.Empty:
                got = body = None
            if got not in (None, PROGRESS):
                return got, body
            now = time.monotonic()
            if now >= deadline:     # fail() answers this job too
                self.fail("no answer to a %s in %d s"
                          % (FRAME_NAMES[kind], timeout))
            elif now - self.last_heard > self.config.io_timeout:
                self.fail("no word from the host for %ds with jobs in flight"
                          % self.config.io_timeout)
            elif gone is not None and gone():
                return None, None
            elif got == PROGRESS or now >= beat:
                beat = now + PROGRESS_INTERVAL  # without TELL too: no spin
                try:
                    if tell is not None:
                        tell(relay_progress(body))
                except (OSError, ValueError):
                    return None, None   # the wrapper is gone

    def cancel(self, job_id):
        """Forget job JOB_ID; the server drops it or stops its compiler."""
        with self.lock:
            self.pending.pop(job_id, None)
        self.send(CANCEL, job_id, [b""])

    def identity(self, compiler):
        """Return the host's identity of COMPILER, asked once a session.
        Raises Rejected if the host lacks it, TransportError as call() does."""
        with self.identity_lock:    # the first caller asks, the others wait
            if compiler not in self.identities:
                try:
                    kind, body = self.call(QUERY, pack_body(
                        {"compiler": compiler}),
                        timeout=self.config.connect_timeout)  # quick, or lost
                    if kind == ERROR:
                        raise_error_body(body)
                    meta, _ = unpack_meta(body)
                    answer = meta.get("identity")
                    if not isinstance(answer, str) or not answer:
                        answer = Rejected(str(meta.get("error"))[:200])
                except DistccError as e:
                    answer = e
                self.identities[compiler] = answer
            answer = self.identities[compiler]
        if isinstance(answer, DistccError):
            raise type(answer)(answer.detail, answer.hint)
        return answer


def relay_progress(body):
    """Return the host's PROGRESS BODY (JSON; None for the relay's own beat)
    as marshal for the wrapper, with only a known state and CPU seconds."""
    try:
        meta = load_meta(bytes(body)) if body else {}
    except ProtocolError:
        meta = {}
    state, cpu = meta.get("state"), meta.get("cpu")
    told = {"state": state} if state in ("queue", "compile") else {}
    if type(cpu) in (int, float):           # JSON's numbers, not a bool
        told["cpu"] = float(cpu)
    return dump_meta(told, MARSHAL)


def find_banner(f):
    """Read past shell noise to the server's banner; return its (version,
    CPU count or None, sandbox: "bwrap" or "none").  Raises ProtocolError
    showing what came instead, TransportError on EOF (ssh's exit says why)."""
    seen = bytearray()
    while len(seen) <= BANNER_NOISE_LIMIT:
        line = f.readline(BANNER_NOISE_LIMIT)
        if not line:
            raise TransportError("connection closed before the server's "
                                 "banner" + noise_note(seen))
        if line.startswith(BANNER_PREFIX):
            fields = line.decode("ascii", "replace").split()
            if len(fields) >= 3 and fields[1] == str(PROTOCOL):
                cpus = [min(int(x[5:]), MAX_HOST_CPUS) for x in fields[3:]
                        if x.startswith("cpus=") and x[5:].isdecimal()]
                box = "bwrap" if "sandbox=bwrap" in fields[3:] else "none"
                return fields[2], (cpus[-1] if cpus else None), box
            raise ProtocolError("server speaks %r, we speak protocol %d" % (
                line.strip().decode("ascii", "replace"), PROTOCOL),
                "install the same distcc.py on both ends")
        seen += line
    raise ProtocolError("no banner in the first %d bytes%s"
                        % (BANNER_NOISE_LIMIT, noise_note(seen)),
                        "is distcc.py -i really the remote command?")


def noise_note(seen):
    """Return ' (received: ...)' with the first printable bytes of SEEN."""
    text = "".join(c if c.isprintable() else "."
                   for c in bytes(seen[:80]).decode("ascii", "replace"))
    return " (received: %r)" % text if seen else ""
# ---------------------------------------------------------------------------
# Server (-i)
#
# The stdio loop that runs compilers for a client.  Each JOB gets a temp dir
# that mirrors the client's paths, so the object records the client's names
# (prefix maps remove the temp dir from debug info).  Runs only compilers,
# only on text the client preprocessed; every rejection is an ERROR frame.
# As many jobs compile at once as it has CPUs, the rest wait in order (one
# CPU, pinned Brotli build: 21.5 s sharing it, 17.9 s in turn; medians of
# 5 paired builds).


def confined_path(root, cwd, name):
    """Return ROOT + the absolute form of NAME (relative to the client's
    CWD), always inside ROOT; raises Rejected on a name it cannot map."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise Rejected("bad path %r" % (name,))
    full = os.path.normpath(os.path.join(cwd, name))
    path = os.path.normpath(root + full)
    if path != root and not path.startswith(root + "/"):
        raise Rejected("path %r escapes the job directory" % name)
    return path


def spelled_path(root, cwd, name):
    """Return where relative NAME goes in job dir ROOT if gcc may take it as
    spelled, else None; makes the dirs its ".." walks through, as on the
    client (Meson's ../src/a.c, Brotli's dec/../common/constants.h)."""
    if not isinstance(name, str) or not name or not set(name).isdisjoint(
            "\0\n") or name.startswith(("/", "-", "@")):
        return None
    walked = [p for p in os.path.normpath(cwd).split("/") if p]
    *dirs, base = name.split("/")
    for part in dirs:
        if part == "..":
            if not walked:
                return None
            os.makedirs(os.path.join(root, *walked), exist_ok=True)
            walked.pop()
        elif part not in ("", "."):
            walked.append(part)
    os.makedirs(os.path.join(root, *walked), exist_ok=True)
    return os.path.join(root, *walked, base)


def find_compiler(name):
    """Return the full path of compiler NAME on this host's PATH; raises
    Rejected if NAME is not a compiler or is not installed."""
    if not is_compiler_name(name):
        raise Rejected("%r is not a compiler this server runs" % (name,),
                       "the server runs gcc, g++, cc, c++ and clang by name")
    path = find_program(name)               # looked up once per server
    if path is None:
        raise Rejected("compiler %s is not installed on this host" % name)
    return path


def compiler_identity(path):
    """Return the lines of `PATH -v` that say what code the compiler makes:
    its version and target (not install paths, nor "Found CUDA ...")."""
    import re
    import subprocess
    try:
        proc = subprocess.run([path, "-v"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, LC_ALL="C"), timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return "error: %s" % e
    lines = (proc.stdout + proc.stderr).decode("utf-8", "replace").splitlines()
    return "\n".join(line.strip() for line in lines if re.search(
        r"^Target: |\b(gcc|clang) version ", line)) or "unknown"


class Turns:
    """At most N holders at once; the others get in in the order they
    took a ticket (a semaphore lets a newcomer jump the queue)."""

    def __init__(self, n):
        import threading
        self.free = n
        self.lock = threading.Lock()
        self.waiting = []

    def ticket(self):
        """Queue up; return the lock to acquire() and then to release()."""
        import threading
        turn = threading.Lock()
        with self.lock:
            if self.free and not self.waiting:
                self.free -= 1
            else:
                turn.acquire()          # release() hands it over
                self.waiting.append(turn)
        return turn

    def release(self, turn):
        """Give up the held TURN; the next in line gets it."""
        with self.lock:
            if self.waiting:
                self.waiting.pop(0).release()
            else:
                self.free += 1


class Server:
    """The -i server's channel and the jobs on it."""

    def __init__(self, reader, writer, cpus):
        import threading
        self.reader = reader          # frames from the client
        self.writer = writer          # frames to the client
        self.write_lock = threading.Lock()
        self.turns = Turns(cpus)      # compiles at once; the rest queue
        self.query_slots = threading.Semaphore(cpus)  # `CC -v` runs at once
        self.threads = []             # job threads, joined at EOF
        self.controls = {}            # job id -> JobControl, until answered
        threading.Thread(target=self.beat, daemon=True).start()

    def send(self, kind, job_id, parts):
        with self.write_lock:
            try:
                write_frame(self.writer, kind, job_id, parts)
            except (OSError, ValueError):
                pass  # the client went away; its jobs are moot

    def serve(self):
        import threading
        while True:
            try:
                frame = read_frame(self.reader)
            except ProtocolError as e:
                warn("bad input from the client: %s" % e)
                self.send(ERROR, 0, error_body("protocol", str(e)))
                break
            if frame is None:
                break
            kind, job_id, body = frame
            if kind == CANCEL:
                control = self.controls.get(job_id)
                if control is not None:  # else it has ended already
                    control.cancel()
            elif kind in (JOB, QUERY) and sum(
                    t.is_alive() for t in self.threads) >= MAX_SESSION_JOBS:
                self.send(ERROR, job_id, error_body("rejected", (
                    "%d jobs of this session are on the host already"
                    % MAX_SESSION_JOBS)))
            elif kind in (JOB, QUERY):
                target, args = self.answer_query, (job_id, body)
                if kind == JOB:
                    target = self.run_job
                    control = self.controls[job_id] = JobControl()
                    turn = self.turns.ticket()  # in the order jobs came
                    if turn.locked():   # it waits: say so (see send_job)
                        self.send(PROGRESS, job_id, progress_body(control))
                    else:
                        control.state = "compile"
                    args += (control, turn)
                t = threading.Thread(target=target, args=args, daemon=True)
                t.start()
                self.threads = [x for x in self.threads if x.is_alive()] + [t]
            else:
                self.send(ERROR, job_id, error_body(
                    "protocol", "unexpected %s frame" % FRAME_NAMES[kind]))
        for t in self.threads:       # the client may still read answers
            t.join()

    def answer_query(self, job_id, body):
        try:
            with self.query_slots:
                name = unpack_meta(body)[0].get("compiler")
                answer = {"compiler": name,
                          "identity": compiler_identity(find_compiler(name))}
        except DistccError as e:
            answer = {"compiler": None, "error": str(e.detail)}
        self.send(IDENTITY, job_id, pack_body(answer))

    def beat(self):
        """Every few seconds, send each job's PROGRESS: a silent host is a
        stalled one, and a compiler whose CPU time stands still is stuck."""
        while True:
            time.sleep(PROGRESS_INTERVAL)
            controls = list(self.controls.items())
            used = group_cpu_seconds() if controls else {}
            for job_id, control in controls:
                if not control.cancelled:
                    self.send(PROGRESS, job_id, progress_body(control, used))

    def run_job(self, job_id, body, control, turn):
        import shutil
        leftovers = []               # job dirs, removed after the answer
        try:
            turn.acquire()
            if control.cancelled:
                return               # taken back, or the client has gone
            if control.state == "queue":
                control.state = "compile"
                self.send(PROGRESS, job_id, progress_body(control))
            try:
                kind, parts = RESULT, compile_job(body, leftovers, control)
            except (Rejected, ProtocolError) as e:
                kind, parts = ERROR, error_body(e.kind, e.detail)
            except OSError as e:  # full disk, no tmp: the host's fault
                kind, parts = ERROR, error_body("transport",
                                                "host error: %s" % e)
            except Exception as e:  # noqa: BLE001  a job we did not foresee
                warn("job %d failed: %r" % (job_id, e))
                kind, parts = ERROR, error_body("rejected", "malformed job")
            if not control.cancelled:
                self.send(kind, job_id, parts)
        finally:
            self.turns.release(turn)
            self.controls.pop(job_id, None)
            for path in leftovers:
                shutil.rmtree(path, ignore_errors=True)


class JobControl:
    """What the reader and heartbeat know of a job, and any CANCEL."""

    def __init__(self):
        import threading
        self.lock = threading.RLock()  # cancel() calls running()
        self.state = "queue"          # or "compile", once its turn came
        self.group = None             # the compiler's pid, while it runs
        self.cancelled = False

    def running(self, pid):
        """Note the compiler's PID (None once ended); kill it if cancelled."""
        import signal
        with self.lock:
            self.group = pid
            if self.cancelled and pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass  # it has just ended by itself

    def cancel(self):
        """Nobody waits for the job: stop it, and let it send nothing."""
        with self.lock:
            self.cancelled = True
            self.running(self.group)


def progress_body(control, used=None):
    """The PROGRESS body for CONTROL's job; USED: group_cpu_seconds()."""
    on = used is not None and control.group is not None
    return dump_meta({"state": control.state,
                      "cpu": used.get(control.group) if on else 0.0})


def group_cpu_seconds():
    """Return {process group: CPU seconds, reaped children's too} in /proc."""
    ticks, used = os.sysconf("SC_CLK_TCK"), {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return used
    for name in filter(str.isdigit, names):
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            # After the name: state, ppid, pgrp (3-5 in proc(5)), 14-17 times
            group, ticks_used = int(fields[2]), sum(map(int, fields[11:15]))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not a process
        used[group] = used.get(group, 0.0) + ticks_used / ticks
    return used


def compile_job(body, leftovers, control):
    """Compile a JOB in a temp dir put on LEFTOVERS; return the RESULT parts.
    Raises Rejected or ProtocolError for a job it will not run."""
    import re
    import subprocess
    import tempfile
    meta, blobs = unpack_body(body)
    extra = meta.get("extra") or []
    if not isinstance(extra, list) or len(blobs) != 2 + len(extra):
        raise ProtocolError("a job carries 2 blobs and its extra files, not "
                            "%d blobs" % len(blobs))
    if len(extra) > MAX_EXTRA_FILES:
        raise Rejected("%d extra files, over the limit of %d"
                       % (len(extra), MAX_EXTRA_FILES))
    compiler = find_compiler(meta.get("compiler"))
    args, mode, lang = meta.get("args"), meta.get("mode"), meta.get("lang")
    check_server_args(args)
    if mode not in ("-c", "-S"):
        raise Rejected("mode must be -c or -S, not %r" % (mode,))
    if not (lang is None or isinstance(lang, str) and
            lang in DISTRIBUTABLE_LANGS):
        raise Rejected("language %r is not compiled here" % (lang,))
    cwd, source = meta.get("cwd"), meta.get("source")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise Rejected("client directory %r is not absolute" % (cwd,))
    env = meta.get("env") or {}
    if not isinstance(env, dict) or not all(
            k in FORWARDED_ENV and isinstance(v, str) for k, v in env.items()):
        raise Rejected("only %s may be forwarded" % ", ".join(FORWARDED_ENV))
    for k, v in env.items():
        if not re.match("(%s)?\\Z" % ENV_PATTERNS.get(k, LOCALE_PATTERN), v):
            raise Rejected("%s=%r is not a locale setting" % (k, v[:80]))
    source_text, original = decompress(blobs[0]), decompress(blobs[1])
    keep = bool(meta.get("save_temps")) and \
        os.environ.get(ENV_SAVE_TEMPS, "0") not in ("", "0")
    root = os.path.realpath(tempfile.mkdtemp(
        prefix="distccpy-keep-" if keep else "distccpy-%d-" % os.getpid()))
    if not keep:
        leftovers.append(root)
    work = confined_path(root, "/", cwd)
    os.makedirs(work, exist_ok=True)
    source_path = spelled_path(root, cwd, source)
    input_arg = source
    if source_path is None:         # absolute, or not for gcc's argv
        source_path = input_arg = confined_path(root, cwd, source)
        os.makedirs(os.path.dirname(source_path), exist_ok=True)
    room = MAX_EXTRA_BYTES      # extras: headers diagnostics quote
    for name, blob in zip(extra, blobs[2:]):
        path = spelled_path(root, cwd, name) or confined_path(root, cwd, name)
        data = decompress(blob, room)
        room -= len(data)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            pass  # the same file by another spelling (a/../b.h and b.h)
    # gcc must read the text as the main file (else -Wsubobject-linkage
    # takes the source's types for a header's), from a FIFO that
    # feed_main_file replaces with the original that diagnostics quote.
    feed = meta.get("family") == "gcc" and lang not in PREPROCESSED_LANGS
    if feed:
        source_text = rebase_markers(source_text, root)
        os.mkfifo(source_path, 0o600)
        with open(os.path.join(root, ".original"), "wb") as f:
            f.write(original)
    else:
        with open(source_path, "wb") as f:
            f.write(source_text)
    # A relative -o stays as spelled (gcc names the .dwo after it), but
    # not an absolute one (naming the temp dir), or an option.
    output = output_arg = meta.get("output")
    output_path = spelled_path(root, cwd, output)
    if output_path is None:
        output_path = output_arg = os.path.join(root, ".out")
    split_dwarf = "-gsplit-dwarf" in args
    if split_dwarf and output_arg != output:
        raise Rejected("-gsplit-dwarf needs a relative output name")
    # gcc applies one map, the last given first: the user's (moved
    # into the job dir if absolute: dpkg-buildflags adds one to every
    # Debian build), then the job dir's.  -pipe: as reads cc1's output
    # as it comes (a tiny job answers 4-6 ms sooner); none is in the .o.
    argv = [compiler, "-pipe", "-ffile-prefix-map=%s=" % root] + [
        moved_map(arg, root) for arg in args] + [mode] + (
        ["-x", lang] if lang else []) + [input_arg, "-o", output_arg]
    if meta.get("color"):
        argv.insert(1, "-fdiagnostics-color=always")
    child_env = {k: v for k, v in os.environ.items() if k not in FORWARDED_ENV}
    # Its temp files (.s) in the job dir: a killed one leaves nothing.
    child_env.update(env, PWD=work, TMPDIR=root)
    started = time.monotonic()
    proc = subprocess.Popen(  # own session: a CANCEL kills cc1 and as too
        argv, cwd=work, env=child_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    control.running(proc.pid)
    try:
        if feed:
            feed_main_file(proc, source_path, source_text,
                           os.path.join(root, ".original"))
        del source_text
        out, err = proc.communicate()
    finally:
        control.running(None)
    result = {"status": proc.returncode, "outputs": [],
              "compile_ms": round((time.monotonic() - started) * 1000)}
    if proc.returncode < 0:
        raise OSError(errno.EINTR, describe_exit(
            proc.returncode, os.path.basename(compiler)))
    if proc.returncode != 0 and b"No space left on device" in err:
        raise OSError(errno.ENOSPC, "no space left in %s"
                      % os.path.dirname(root))
    if meta.get("family") == "gcc" and err:
        result["missing"] = missing_sources(err, work, root)
    # Absolute names of the client's files are the job dir's here.
    blobs_out = [out.replace(root.encode() + b"/", b"/"),
                 err.replace(root.encode() + b"/", b"/")]
    files = [("output", output_path)] if proc.returncode == 0 else []
    if files and split_dwarf:
        files.insert(0, ("dwo", replace_suffix(output_path, ".dwo")))
    for name, path in files:
        with open(path, "rb") as f:
            data = f.read()
        result["outputs"].append({"name": name, "raw": len(data)})
        blobs_out.append(zlib.compress(data, COMPRESS_LEVEL))
    if keep:
        result["temps"] = root      # DISTCC_SAVE_TEMPS: kept for a look
    return pack_body(result, blobs_out)


def feed_main_file(proc, path, text, original):
    """Write TEXT into the FIFO at PATH once PROC's compiler opens it; then
    rename ORIGINAL over PATH before EOF: gcc re-reads its main file to
    quote a line, and a second open of the FIFO would wait for ever."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno != errno.ENXIO or proc.poll() is not None:
                return              # no reader yet, or the compiler has gone
            time.sleep(0.001)
    try:
        os.set_blocking(fd, True)
        view = memoryview(text)
        while view:
            view = view[os.write(fd, view):]
        os.rename(original, path)
    except BrokenPipeError:
        pass  # the compiler ended (or was killed): its status tells
    finally:
        os.close(fd)


def missing_sources(stderr, work, root):
    """Return the files STDERR's diagnostics quote that job dir ROOT lacks
    (gcc prints no source line): relative to WORK, or rebased into ROOT."""
    import re
    plain = re.sub(rb"\x1b\[[0-9;]*[mK]", b"", stderr)      # colours off
    names = {m.group(1).decode("utf-8", "surrogateescape") for m in
             re.finditer(rb"(?m)^([^\s:][^:\n]*):[0-9]+:[0-9]+: ", plain)}
    names = {n[len(root):] if n.startswith(root + "/") else n for n in names
             if not n.startswith(("<", "/")) or n.startswith(root + "/")}
    return sorted(n for n in names if not os.path.exists(
        root + n if n.startswith("/") else os.path.join(work, n)))[
            :MAX_EXTRA_FILES]


def rebase_markers(text, root):
    """Return TEXT with its line markers' absolute names moved into job dir
    ROOT, but system headers' (flag 3: the host has them), so that gcc finds
    the main file by its marker's name, and quoted files where resent."""
    import re
    # After a newline, not (?m)^: re then skips to each "\n# " at memchr's
    # speed (2 ms a megabyte, not 5).
    return re.sub(rb'\n(# [0-9]+ ")(/[^"\n]*"(?: [124])*)(?=\n)', lambda m:
                  b"\n" + m.group(1) + root.encode() + m.group(2),
                  b"\n" + text)[1:]


def moved_map(arg, root):
    name, _, value = arg.partition("=")
    if name in ("-ffile-prefix-map", "-fdebug-prefix-map",
                "-fmacro-prefix-map") and value.startswith("/"):
        return "%s=%s%s" % (name, root, value)
    return arg


def sweep_job_dirs():
    """Remove the distccpy-PID-* dirs that this user's killed servers left."""
    import re
    import shutil
    import tempfile
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        m = re.match(r"distccpy-(\d+)-", name)
        path = os.path.join(tmp, name)
        try:
            if m and os.lstat(path).st_uid == os.getuid():
                os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # alive (another user's pid), or gone meanwhile


def sandbox_argv(bwrap, tmp):
    """Return the bubblewrap argv that runs this server seeing only system and
    compiler dirs (read-only) and TMP: no home, no network, own processes."""
    home = os.path.realpath(os.path.expanduser("~")) + "/"
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--dev", "/dev",
            "--proc", "/proc", "--setenv", "TMPDIR", tmp,
            "--setenv", ENV_SANDBOX, "bwrap"]
    for path in dict.fromkeys([         # in order, once each
            "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
            "/etc/alternatives", "/etc/ld.so.cache", sys.base_prefix,
            os.path.dirname(os.path.realpath(__file__))] + [
            os.path.realpath(d) for d in os.environ.get("PATH", "").split(
                os.pathsep) if d.startswith("/") and
            not (os.path.realpath(d) + "/").startswith(home)]):
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    # Last, so that no read-only bind above covers it.
    return argv + ["--bind", tmp, tmp, "--chdir", tmp, "--", sys.executable,
                   "-S", os.path.realpath(__file__), "-i"]


def run_sandboxed():
    """Run this server in bubblewrap until it ends; return its exit status,
    or None to serve unsandboxed (no usable bwrap, or DISTCC_SANDBOX=0)."""
    import shutil
    import subprocess
    import tempfile
    bwrap = shutil.which("bwrap")
    if not bwrap or os.environ.get(ENV_SANDBOX) in ("0", "bwrap") or \
            os.environ.get(ENV_SAVE_TEMPS, "0") not in ("", "0"):
        return None                 # (kept job dirs must outlive us)
    # Named after this pid: if we are killed, the next server sweeps it.
    tmp = os.path.realpath(tempfile.mkdtemp(prefix="distccpy-%d-sandbox-"
                                            % os.getpid()))
    try:
        argv = sandbox_argv(bwrap, tmp)
        if subprocess.call(argv[:argv.index("--") + 1] + ["true"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) != 0:
            return None             # no user namespaces here, say
        import signal
        proc = subprocess.Popen(argv)
        # sshd hangs up when the client dies: end the sandbox, remove tmp.
        for sig in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, lambda *_: proc.kill())
        return proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def server_main():
    """Serve jobs on stdin/stdout until the client closes the stream."""
    gc.enable()                     # long-lived: the launcher turned it off
    Log.role = "server"
    sandboxed = os.environ.get(ENV_SANDBOX) == "bwrap"
    if not sandboxed:
        sweep_job_dirs()
        status = run_sandboxed()
        if status is not None:
            return status
    # Frames own the channel (new fds); fd 1 is stderr, safe from children.
    reader = os.fdopen(os.dup(0), "rb")
    writer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        cpus = len(os.sched_getaffinity(0)) or 1    # taskset, cpusets count
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    writer.write((BANNER_FORMAT % (PROTOCOL, VERSION, cpus, "bwrap"
                                   if sandboxed else "none")).encode())
    writer.flush()
    Server(reader, writer, cpus).serve()
    return 0
# ---------------------------------------------------------------------------
# Commands
#
# What a user runs by hand (--explain, --show-hosts, --check, --monitor,
# --stats): they read what wrappers and relays wrote, and never fail a build.


def explain(argv):
    """Print the decision for compiler command ARGV as one line of JSON."""
    try:
        job = scan_args(expand_response_files(argv))
        check_job_files(job)
        if find_program(job.compiler) is None:
            raise LocalOnly("compiler %s not found here" % job.compiler, job)
        remote, reason = True, None
    except LocalOnly as e:
        job, remote, reason = e.job, False, e.detail
    import json
    print(json.dumps({"remote": remote, "input": job and job.source,
                      "output": job and job.output, "reason": reason,
                      "language": job and job.lang,
                      "depfile": job and job.depfile}))
    return 0


def show_hosts(config):
    """Print the host list with limits and current state."""
    hosts = config.hosts()
    if not hosts:
        print("no hosts: set DISTCC_HOSTS or write %s/hosts" % config.dir)
    for host in hosts:
        state = "compiles here" if host.is_local else "ok"
        if not host.is_local:
            try:
                until = os.stat(backoff_path(config, host)).st_mtime
                state = "backoff over, next job probes"
                if until > time.time():
                    state = "backed off until %s" % time.strftime(
                        "%H:%M:%S", time.localtime(until))
            except FileNotFoundError:
                pass  # not backed off
            if os.path.exists(relay_paths(config, host)[0]):
                state += ", relay running"
            for line in read_host_note(config, host, "mismatch").splitlines():
                state += "; compiler differs: " + line
        print("%-40s limit %-3d %s" % (host.spec, host_slots(config, host),
                                       state))
    return 0


def check_host(config, spec):
    """Diagnose one host for a new user; return 0 only if it is usable."""
    if spec.split("/")[0] == "localhost":
        raise UsageError("in a host list localhost means this machine, "
                         "without ssh", "to check ssh to it, write "
                         "--check @localhost")
    host = parse_host(spec if "@" in spec else "@" + spec)

    def say(ok, text):
        print("%-4s %s" % ("ok" if ok else "FAIL", text), flush=True)
        return ok

    def round_trip(blobs=()):
        t = time.monotonic()
        session.call(QUERY, pack_body({"compiler": "gcc"}, blobs))
        return time.monotonic() - t
    argv = build_ssh_argv(config.ssh_command, host, config.dir)
    state_dir(config)
    started = time.monotonic()
    try:
        session = Session(argv, config)
    except (TransportError, ProtocolError) as e:
        say(False, "ssh %s: %s" % (host.hostname, e))
        print("     command: %s" % " ".join(argv))
        return 1
    good = True
    try:
        say(True, "ssh reaches %s without a prompt (%.0f ms to the banner)"
            % (host.hostname, (time.monotonic() - started) * 1000))
        say(True, "distcc.py %s runs there (protocol %d, %s CPUs); here: %s"
            % (session.server_version, PROTOCOL, session.cpus, VERSION))
        print("--   " + ("host sandboxes compiles (bwrap)" if session.sandbox
                         == "bwrap" else "host does not sandbox compiles "
                         "(no usable bwrap there)"))
        for name in filter(find_program, COMPILER_BASENAMES):
            try:
                theirs = session.identity(name)
            except Rejected as e:
                print("--   %s: %s" % (name, e.detail))
                continue
            ours = compiler_identity(find_program(name))
            same, text = theirs == ours, theirs.replace("\n", ", ")
            if not same:
                text += " there, %s here" % ours.replace("\n", ", ")
            good = say(same, "%s %s: %s" % (
                name, "matches" if same else "differs", text)) and good
        good = check_probe_compile(session, say) and good
        times = sorted(round_trip() for _ in range(20))
        payload = os.urandom(4 << 20)
        say(True, "round trip %.2f ms (median of 20), throughput %.0f MB/s"
            % (times[10] * 1000, len(payload) / round_trip([payload]) / 1e6))
    except DistccError as e:
        good = say(False, "%s: %s" % (host.hostname, e))
    finally:
        session.close()
    print("%s is %susable" % (host.hostname, "" if good else "NOT "))
    return 0 if good else 1


def check_probe_compile(session, say):
    """Compile a probe file on the session's host and here; compare."""
    import subprocess
    import tempfile
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="distccpy-check-") as d:
        os.chdir(d)
        try:
            with open("probe.c", "w") as f:
                f.write('#include <stdio.h>\n#define TWICE(x) ((x) * 2)\nint '
                        'probe(int x) { return printf("%d", TWICE(x)); }\n')
            argv = ["gcc", "-O2", "-g", "-c", "probe.c", "-o", "probe.o"]
            meta, blobs, _ = prepare_job(scan_args(argv))
            kind, body = session.call(JOB, pack_body(meta, blobs))
            if kind == ERROR:
                raise_error_body(body)
            result, got = unpack_body(body)
            if result.get("status") != 0:
                return say(False, "probe compile failed there: %s"
                           % bytes(got[1]).decode(errors="replace").strip())
            remote = decompress(got[-1])
            if subprocess.call(argv) != 0:
                return say(False, "probe compile failed here")
            with open("probe.o", "rb") as f:
                local = f.read()
        finally:
            os.chdir(here)
    return say(remote == local, "probe compile (gcc -O2 -g): the object "
               "from there is %s the local one (%d bytes)"
               % ("identical to" if remote == local else "DIFFERENT from",
                  len(local)))


def read_stats(directory, offset=None):
    """Return (dicts of STATS_FIELDS, end offset) of $DISTCC_DIR/stats from
    OFFSET (all of a shorter, rotated one), or of stats.old and stats."""
    path = os.path.join(directory, "stats")
    try:
        with open(path, "rb") as f:
            if offset is not None and offset <= os.fstat(f.fileno()).st_size:
                f.seek(offset)
            data, end = f.read(), f.tell()
    except OSError:
        return [], 0
    if offset is None:
        try:
            with open(path + ".old", "rb") as f:
                data = f.read() + data
        except OSError:
            pass  # never rotated
    records = []
    for line in data.decode("utf-8", "replace").splitlines():
        values = line.split("\t")
        if len(values) != len(STATS_FIELDS):
            continue  # a torn line from a full disk: skip it
        rec = dict(zip(STATS_FIELDS, values))
        try:
            rec.update((key, int(rec[key])) for key in STATS_FIELDS[3:-1])
            rec["time"] = float(rec["time"])
            records.append(rec)
        except ValueError:
            pass  # a torn line
    return records, end


def read_job_states(directory):
    """Return the jobs in flight, oldest first; drop dead wrappers' lines."""
    folder, jobs = os.path.join(directory, "jobs"), []
    try:
        names = os.listdir(folder)
    except OSError:
        return jobs
    for name in filter(str.isdigit, names):
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            os.kill(int(name), 0)
            phase, started, host, source = text.rstrip("\n").split("\t")
            jobs.append({"pid": int(name), "phase": phase.strip(),
                         "started": float(started), "host": host,
                         "source": source})
        except ProcessLookupError:
            try:
                os.unlink(path)
            except OSError:
                pass  # another reader swept it
        except (OSError, ValueError):
            pass  # unreadable, or being rewritten at this instant
    return sorted(jobs, key=lambda job: job["started"])


def summarize_stats(records):
    """Return the counters --stats prints, from stats RECORDS."""
    totals = dict.fromkeys(OUTCOMES, 0)
    hosts, local_reasons, fallbacks = {}, {}, {}
    sizes = dict.fromkeys(("preprocessed", "sent", "objects", "received"), 0)
    times = dict.fromkeys(("preprocess", "transfer", "compile", "write"), 0)
    for rec in records:
        outcome = rec["outcome"] if rec["outcome"] in OUTCOMES else "failed"
        totals[outcome] += 1
        hosts.setdefault(rec["host"], dict.fromkeys(OUTCOMES, 0))[outcome] += 1
        if outcome == "local":
            # "no -c or -S: this command links" counts as "no -c or -S".
            why = rec["reason"].split(": ")[0] or "unknown"
            local_reasons[why] = local_reasons.get(why, 0) + 1
        elif outcome in ("fallback", "failed"):
            fallbacks[rec["reason"]] = fallbacks.get(rec["reason"], 0) + 1
        sizes = {key: n + rec[key] for key, n in sizes.items()}
        times = {key: n + rec[key + "_ms"] for key, n in times.items()}
    return {"jobs": len(records), **totals,
            "hosts": {h: {k: v for k, v in c.items() if v}
                      for h, c in sorted(hosts.items())},
            "local_reasons": local_reasons, "fallback_reasons": fallbacks,
            "bytes": sizes,
            "seconds": {k: round(v / 1000.0, 3) for k, v in times.items()},
            "since": min((r["time"] for r in records), default=None)}


def format_summary(stats):
    """One line: how many jobs ran where, and why any ran here."""
    remote = ", ".join("%s %d" % (host, counts["remote"]) for host, counts
                       in stats["hosts"].items() if counts.get("remote"))
    local = ", ".join("%d %s" % (n, why) for why, n in sorted(
        stats["local_reasons"].items(), key=lambda kv: -kv[1]))
    text = "%d job%s: %d remote%s, %d local%s" % (
        stats["jobs"], "s"[stats["jobs"] == 1:], stats["remote"],
        remote and " (%s)" % remote, stats["local"], local and " (%s)" % local)
    if stats["fallback"] or stats["failed"]:
        text += ", %d fell back, %d failed (%s)" % (
            stats["fallback"], stats["failed"], ", ".join(
                "%d %s" % (n, why)
                for why, n in stats["fallback_reasons"].items()))
    return text


def monitor(config, delay, count=None):
    """Every DELAY seconds (COUNT times, or until Ctrl-C) show the jobs in
    flight by host and phase, and what finished since --monitor started."""
    gc.enable()                     # long-lived: the launcher turned it off
    offset = read_stats(config.dir)[1]      # what finished before is not shown
    finished, shown = [], 0
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    while count is None or shown < count:
        if shown:
            time.sleep(delay)
        records, offset = read_stats(config.dir, offset)
        finished += records
        jobs = read_job_states(config.dir)
        print(clear + format_monitor(jobs, finished, time.time()),
              end="" if clear else "\n", flush=True)
        shown += 1
    return 0


def format_monitor(jobs, finished, now):
    """One screen of --monitor: hosts by phase, the jobs, FINISHED's totals."""
    lines = ["distcc.py --monitor  %s  %d job%s in flight" % (
        time.strftime("%H:%M:%S", time.localtime(now)), len(jobs),
        "s"[len(jobs) == 1:])]
    lines.append("%-20s" % "host" + "".join("%11s" % p for p in PHASES))
    for host in sorted({job["host"] for job in jobs}):
        phases = [j["phase"] for j in jobs if j["host"] == host]
        lines.append("%-20s" % (host if host != "-" else "(here)") +
                     "".join("%11d" % phases.count(p) for p in PHASES))
    for job in jobs:
        lines.append("  %7d  %-10s %-20s %6.1fs  %s" % (
            job["pid"], job["phase"], job["host"], now - job["started"],
            job["source"]))
    stats = summarize_stats(finished)
    lines.append("finished since --monitor started: " + format_summary(stats))
    sizes = stats["bytes"]
    if sizes["sent"] or sizes["received"]:
        lines.append("sent %s as %s; received %s as %s"
                     % tuple(map(format_bytes, sizes.values())))
    return "\n".join(lines) + "\n"


def format_bytes(n):
    if n < 10 ** 4:
        return "%d bytes" % n
    return "%.1f KB" % (n / 1e3) if n < 10 ** 7 else "%.1f MB" % (n / 1e6)
# ---------------------------------------------------------------------------
# Main dispatch
#
# Picks the role, reads the configuration once, maps errors to exit codes.

USAGE = """\
usage: distcc.py COMPILER [ARGS...]   compile, remotely when possible
       distcc.py --explain COMPILER ARGS...
                                      say (as JSON) whether it would be remote
       distcc.py -i                   serve jobs on stdin/stdout (build host)
       distcc.py --check HOST         diagnose one host (ssh, versions, probe)
       distcc.py --show-hosts         list hosts, limits and state
       distcc.py --monitor [SECONDS [COUNT]]
                                      watch jobs in flight, by host and phase
       distcc.py --stats | --summary  counters as JSON, or one line
       distcc.py --zero-stats         start the counters again
       distcc.py -j                   print the number of job slots
       distcc.py --stop               stop this user's relays
       distcc.py --version | --help

Set DISTCC_HOSTS (e.g. "@buildbox/8 me@box2:/opt/bin/distcc.py") and use
CC="distcc.py gcc".

"""


def parse_monitor_args(args):
    """Parse --monitor [SECONDS [COUNT]] into (delay, count), or UsageError."""
    try:
        delay = float(args[0]) if args else 1.0
        count = int(args[1]) if len(args) > 1 else None
    except ValueError:
        delay = -1
    if len(args) > 2 or not 0 < delay < float("inf") or \
            (count is not None and count < 1):
        raise UsageError("--monitor takes a delay and a count, got %s"
                         % " ".join(args), "e.g. distcc.py --monitor 0.5")
    return delay, count


def main(argv, invoked_as):
    """Run the role ARGV or INVOKED_AS (as gcc) asks for; return the status."""
    Log.verbose = os.environ.get(ENV_VERBOSE, "0") not in ("", "0")
    Log.path = os.environ.get(ENV_LOG) or None
    try:
        name = os.path.basename(invoked_as)
        if is_compiler_name(name):
            # Masquerade: a symlink named gcc (or cc, g++, clang...) early
            # on PATH points here; the real compiler is further along.
            return wrapper_main([name] + argv, Config(os.environ))
        if not argv or argv[0] in ("-h", "--help"):
            sys.stdout.write(USAGE + __doc__[__doc__.index("Environment:"):])
            return 0 if argv else EXIT_BAD_ARGUMENTS
        if argv[0] == "--version":
            print("distcc.py %s (protocol %d)" % (VERSION, PROTOCOL))
            return 0
        if argv[0] == "--explain":
            if len(argv) < 2:
                raise UsageError("--explain needs a compiler command",
                                 "e.g. distcc.py --explain gcc -c a.c")
            return explain(argv[1:])
        if argv[0] == "-i":
            if len(argv) != 1:
                raise UsageError("-i takes no arguments",
                                 "the remote command is 'distcc.py -i'")
            return server_main()
        config = Config(os.environ)
        if not argv[0].startswith("-"):
            return wrapper_main(argv, config)
        if argv[0] == "--relay" and len(argv) == 4:  # from start_relay only
            return relay_main(config, argv[1:])
        if argv[0] == "--check":
            if len(argv) != 2:
                raise UsageError("--check takes one host",
                                 "e.g. distcc.py --check buildbox")
            return check_host(config, argv[1])
        if argv[0] not in ("--show-hosts", "--monitor", "--stats",
                           "--summary", "--zero-stats", "-j", "--stop"):
            raise UsageError("unknown option %s" % argv[0],
                             "name the compiler first (distcc.py gcc %s"
                             " ...), or see distcc.py --help" % argv[0])
        state_dir(config)           # never read, or act on, another's files
        if argv[0] == "--show-hosts":
            return show_hosts(config)
        if argv[0] == "--monitor":
            return monitor(config, *parse_monitor_args(argv[1:]))
        if argv[0] == "--summary":
            print(format_summary(summarize_stats(read_stats(config.dir)[0])))
        elif argv[0] == "--stats":
            import json
            stats = summarize_stats(read_stats(config.dir)[0])
            stats["in_flight"] = read_job_states(config.dir)
            print(json.dumps(stats, indent=2))
        elif argv[0] == "--zero-stats":
            for name in ("stats", "stats.old"):
                try:
                    os.unlink(os.path.join(config.dir, name))
                except FileNotFoundError:
                    pass  # nothing counted yet
        elif argv[0] == "-j":
            print(max(1, sum(host_slots(config, h) for h in config.hosts())))
        elif argv[0] == "--stop":
            n = relay_stop(config)
            print("stopped %d relay%s" % (n, "s"[n == 1:]))
        return 0
    except DistccError as e:
        warn(str(e))
        return EXIT_BAD_ARGUMENTS if isinstance(e, UsageError) else \
            EXIT_DISTCC_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # distcc.py --monitor | head: the reader has gone; so do we.
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 0
    except Exception:
        if Log.verbose:
            raise
        warn("internal error: %s; rerun with DISTCC_VERBOSE=1 for details"
             % sys.exc_info()[1])
        return EXIT_DISTCC_FAILED


def launch(argv, invoked_as):
    """Entry point of the sh launcher: run main, then leave at once."""
    status = main(argv, invoked_as)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing is reading what is left
    # Skip the collector and the interpreter's teardown: 6 ms of CPU a job.
    os._exit((status or 0) & 0xFF)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], sys.argv[0]))
