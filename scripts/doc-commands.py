#!/usr/bin/env python3
"""Runs the shell commands the docs tell a user to run (`make test` runs this).

Every fenced shell block (```sh, ```bash, ```shell) in README.md, ARCHITECTURE.md,
loadtest/README.md and docs/*.md must say, after its language, what it is:

  ```sh check [timeout=S] [exit=N]
                            run; every command must succeed within S seconds
                            (default 300), and the block end with status N
                            (default 0; a command that fails stops the block
                            with its status). `curl` here fails on an HTTP
                            error status (it runs with --fail-with-body).
  ```sh serve [port=P]      each line starts a server in the background; the
                            check waits until http://127.0.0.1:P/readyz answers
                            200 (P defaults to the STOCKWIRE_LISTEN port on the
                            line, else 8080). Every line but the last is stopped
                            (SIGTERM) once ready; the last serves the blocks
                            after it, until the document ends.
  ```sh illustrative        shown, not run (a placeholder to fill in, a command
                            that needs a real incident or minutes of benchmark,
                            or `make test` itself). The text should say why.

An unmarked shell block is an error, so a new example cannot slip by unchecked.

Each document runs in a copy of the working tree (a fixed path under the cargo
target dir, with a target dir of its own there, so builds are reused between
runs; `target` in the copy points at it) with an empty ./data, one block after
another; shell
variables and functions a block defines are seen by the blocks after it, as in
a terminal. Servers listen on 127.0.0.1 only: a document's port that is already
taken fails the check rather than talking to somebody else's server.

Usage: scripts/doc-commands.py [FILE.md ...]   (default: all of them)
       scripts/doc-commands.py --list           (the blocks and their marks)
       scripts/doc-commands.py --self-test      (shows that failures are caught)
"""

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELLS = {"sh", "bash", "shell"}
MARKS = {"check", "serve", "illustrative"}
DEFAULT_TIMEOUT = 300
READY_TIMEOUT = 1200  # a serve line may build the release binary first
FENCE = re.compile(r"^(\s*)```(\S*)\s*(.*)$")


class Block:
    def __init__(self, path, line, words, body):
        self.path, self.line, self.body = path, line, body
        self.mark = next((w for w in words if w in MARKS), None)
        self.options = dict(w.split("=", 1) for w in words if "=" in w)

    def where(self):
        return f"{os.path.relpath(self.path, ROOT)}:{self.line}"


def documents():
    names = ["README.md", "ARCHITECTURE.md", "loadtest/README.md"]
    names += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [os.path.join(ROOT, n) for n in names if os.path.exists(os.path.join(ROOT, n))]


def blocks_of(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, rest = m.groups()
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        body = "\n".join(l[len(indent):] if l.startswith(indent) else l for l in lines[i + 1 : j])
        if lang in SHELLS:
            found.append(Block(path, i + 1, rest.split(), body))
        i = j + 1
    return found


def port_taken(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def stop_group(process, term_seconds):
    """SIGTERM to the process's whole group (a server, `cargo run` and what it
    runs, whatever a block left in the background), SIGKILL after
    `term_seconds`; returns once every process of it has exited."""
    for sig, seconds in ((signal.SIGTERM, term_seconds), (signal.SIGKILL, 5)):
        if not group_alive(process.pid):
            break
        os.killpg(process.pid, sig)
        for _ in range(int(seconds * 10)):
            process.poll()
            if not group_alive(process.pid):
                break
            time.sleep(0.1)
    process.wait()


def sandbox():
    # The copy gets a target dir of its own: cargo hashes a workspace's units by
    # their path *within* the workspace, so a copy building into the real target
    # dir would share (and overwrite) the checkout's artifacts and fingerprints,
    # and the checkout's next build could take the copy's files for its own.
    outer = os.path.abspath(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"))
    work = os.path.join(outer, "doc-check")
    target = os.path.join(work, "target")
    os.environ["CARGO_TARGET_DIR"] = target
    tree = os.path.join(work, "tree")
    os.makedirs(tree, exist_ok=True)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    wanted = {f for f in files if f and os.path.isfile(os.path.join(ROOT, f))}
    for dirpath, dirnames, filenames in os.walk(tree, topdown=True):
        rel = os.path.relpath(dirpath, tree)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d != "target"]
        for name in filenames:
            path = os.path.normpath(os.path.join(rel, name))
            if path not in wanted:
                os.remove(os.path.join(dirpath, name))
    for f in sorted(wanted):
        src, dst = os.path.join(ROOT, f), os.path.join(tree, f)
        if os.path.exists(dst) and open(src, "rb").read() == open(dst, "rb").read():
            continue  # unchanged: keep its mtime so cargo does not rebuild
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
    link = os.path.join(tree, "target")
    if os.path.islink(link) and os.readlink(link) != target:
        os.remove(link)
    if not os.path.islink(link):
        if os.path.exists(link):
            shutil.rmtree(link)
        os.makedirs(target, exist_ok=True)
        os.symlink(target, link)
    return tree, work


PRELUDE = r"""
set -eo pipefail
__doc_pristine="$(compgen -v | sort)"
curl() { command curl --fail-with-body "$@"; }
if [ -f "$DOC_STATE" ]; then
  . "$DOC_STATE" || { echo "doc-commands: could not restore the earlier blocks' variables" >&2; exit 97; }
fi
__doc_save() {
  compgen -v | sort > "$DOC_STATE.vars"
  { printf '%s\n' "$__doc_pristine" | comm -13 - "$DOC_STATE.vars" \
      | grep -E '^[A-Za-z][A-Za-z0-9_]*$' \
      | grep -vE '^(BASH|FUNCNAME$|PIPESTATUS$|COMP_|GROUPS$|LINENO$|RANDOM$|SECONDS$|SRANDOM$|EPOCH|HISTCMD$|OLDPWD$|PWD$)' \
      | while read -r v; do declare -p "$v" 2>/dev/null; done
    declare -f | sed '/^curl ()/,/^}/d; /^__doc_save ()/,/^}/d'
  } > "$DOC_STATE.new" && mv "$DOC_STATE.new" "$DOC_STATE"
}
trap __doc_save EXIT
"""


def group_alive(pgid):
    """Whether a process of group `pgid` still runs (zombies do not count: an
    orphaned one waits for init to reap it)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def run_check(body, tree, env, timeout, expected):
    """Runs one block in its own process group; whatever it left running in the
    background (a server started with `&`) is stopped when it ends."""
    with open(os.path.join(os.path.dirname(env["DOC_STATE"]), "check.log"), "w+b") as out:
        process = subprocess.Popen(
            ["bash", "-c", PRELUDE + "\n" + body],
            cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout)
            why = f"exit {code}"
        except subprocess.TimeoutExpired:
            code, why = None, f"over {timeout} s"
        finally:
            stop_group(process, term_seconds=5)
        out.seek(0)
        if code is not None and code != expected:
            why += f", expected {expected}"
        return code == expected, out.read().decode(errors="replace"), why


def start_server(block, index, line, tree, env, work):
    """Starts one `serve` line and waits for its /readyz: `(process, log, None)`,
    or `(None, None, why)` when it cannot start or never gets ready."""
    m = re.search(r"STOCKWIRE_LISTEN=[\d.]+:(\d+)", line)
    port = int(block.options.get("port") or (m.group(1) if m else 8080))
    if port_taken(port):
        return None, None, f"{block.where()}: port {port} is taken; stop what listens there"
    log_path = os.path.join(work, f"serve-{os.path.basename(block.path)}-{block.line}-{index}.log")
    log = open(log_path, "wb")
    process = subprocess.Popen(
        ["bash", "-c", PRELUDE + "\ntrap - EXIT\n" + line],
        cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    started, deadline = time.monotonic(), time.monotonic() + READY_TIMEOUT
    while not ready(port):
        if process.poll() is not None or time.monotonic() > deadline:
            why = "exited" if process.poll() is not None else f"not ready in {READY_TIMEOUT} s"
            stop_group(process, term_seconds=30)
            log.close()
            tail = open(log_path, "rb").read()[-4000:].decode(errors="replace")
            return None, None, f"{block.where()}: `{line}` {why}\n{tail}"
        time.sleep(0.2)
    print(f"doc-commands: {block.where()} serve `{line[:60]}` ready on {port} "
          f"in {time.monotonic() - started:.1f} s", flush=True)
    return process, log, None


def run_document(path, tree, work):
    blocks = blocks_of(path)
    runnable = [b for b in blocks if b.mark in ("check", "serve")]
    if not runnable:
        return []
    name = os.path.relpath(path, ROOT)
    shutil.rmtree(os.path.join(tree, "data"), ignore_errors=True)
    state = os.path.join(work, "state.sh")
    if os.path.exists(state):
        os.remove(state)
    env = dict(os.environ, DOC_STATE=state)
    failures, server = [], None
    try:
        for block in runnable:
            if failures:
                break
            if block.mark == "check":
                started = time.monotonic()
                timeout = int(block.options.get("timeout", DEFAULT_TIMEOUT))
                expected = int(block.options.get("exit", 0))
                ok, out, why = run_check(block.body, tree, env, timeout, expected)
                print(f"doc-commands: {block.where()} check {'ok' if ok else 'FAILED (' + why + ')'} "
                      f"in {time.monotonic() - started:.1f} s", flush=True)
                if not ok:
                    failures.append(f"{block.where()}: {why}\n{out[-4000:]}")
                continue
            lines = [l.strip() for l in block.body.split("\n") if l.strip() and not l.lstrip().startswith("#")]
            for index, line in enumerate(lines):
                if server:
                    stop_group(server[0], term_seconds=30)
                    server[1].close()
                    server = None
                process, log, why = start_server(block, index, line, tree, env, work)
                if why:
                    failures.append(why)
                    break
                server = (process, log)
    finally:
        if server:
            stop_group(server[0], term_seconds=30)
            server[1].close()
    if not failures:
        print(f"doc-commands: {name}: {len(runnable)} blocks ok", flush=True)
    return failures


def self_test():
    """The check can fail: a failing command, a wrong exit status, an HTTP error
    status, a variable not carried over and an unmarked block are each caught
    (and the same blocks without the fault pass)."""
    import tempfile
    tree, work = sandbox()
    cases = {
        "passes": ("```sh check\nA=1\n```\n```sh check\n[ \"$A\" = 1 ]\n```\n", True),
        "fails": ("```sh check\ntrue\nfalse\ntrue\n```\n", False),
        "wrong exit": ("```sh check exit=2\nexit 3\n```\n", False),
        "expected exit": ("```sh check exit=2\nexit 2\n```\n", True),
        # a server that answers 404: curl here must fail on the status, not only
        # on a refused connection
        "http error": ("```sh check\n"
                       "P=$(python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])')\n"
                       "python3 -m http.server --bind 127.0.0.1 \"$P\" >/dev/null 2>&1 &\n"
                       "until command curl -s -o /dev/null \"http://127.0.0.1:$P/\"; do sleep 0.1; done\n"
                       "curl -s \"http://127.0.0.1:$P/missing\" >/dev/null\n```\n", False),
        "http ok": ("```sh check\n"
                    "P=$(python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])')\n"
                    "python3 -m http.server --bind 127.0.0.1 \"$P\" >/dev/null 2>&1 &\n"
                    "until command curl -s -o /dev/null \"http://127.0.0.1:$P/\"; do sleep 0.1; done\n"
                    "curl -s \"http://127.0.0.1:$P/\" >/dev/null\n```\n", True),
    }
    wrong = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (text, should_pass) in cases.items():
            path = os.path.join(tmp, "case.md")
            open(path, "w").write(text)
            passed = not run_document(path, tree, work)
            if passed != should_pass:
                wrong.append(name)
        path = os.path.join(tmp, "unmarked.md")
        open(path, "w").write("```sh\necho hi\n```\n")
        if [b for b in blocks_of(path) if b.mark is None] == []:
            wrong.append("unmarked")
    if wrong:
        print(f"doc-commands: self-test FAILED: {', '.join(wrong)}", file=sys.stderr)
        return 1
    print("doc-commands: self-test ok (failures are caught)")
    return 0


def main(argv):
    if argv[:1] == ["--self-test"]:
        return self_test()
    if argv[:1] == ["--list"]:
        for path in documents():
            for b in blocks_of(path):
                print(f"{b.where():32} {b.mark or 'UNMARKED'}")
        return 0
    paths = [os.path.abspath(a) for a in argv] or documents()
    unmarked = [b.where() for p in documents() for b in blocks_of(p) if b.mark is None]
    if unmarked:
        print("doc-commands: shell blocks without check, serve or illustrative:\n  "
              + "\n  ".join(unmarked), file=sys.stderr)
        return 1
    tree, work = sandbox()
    failures = []
    for path in paths:
        failures += run_document(path, tree, work)
    if failures:
        print("\ndoc-commands: FAILED\n" + "\n\n".join(failures), file=sys.stderr)
        return 1
    print("doc-commands: every checked command ran")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
