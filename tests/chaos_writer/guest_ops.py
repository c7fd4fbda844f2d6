#!/usr/bin/env python3
"""The chaos writer's hands inside the lab's user-mode-linux web guest (LAB_WEB=uml).

    python3 guest_ops.py SPOOL ROOT

The test (on the host) decides every operation and keeps the model; this only performs them on
the guest's kernel NFS mount at ROOT and says how each ended. SPOOL is a directory both sides see
(under the lab's state dir). The test writes SPOOL/req/N atomically (a temporary name, then a
rename); this takes it, performs it on a thread of its own (one stuck in D on a dead mount blocks
nothing else) and writes SPOOL/res/N: "ok" or "err <message>". A request is

    KIND \\0 NAME [\\0 NAME2] \\0 DATA          KIND: write | append | rename | delete | mkdir

and a write or append ends with fsync, so "ok" means acknowledged by the server. SPOOL/stop ends
the loop (threads still stuck in D die with the process).
"""
import os
import sys
import threading
import time


def perform(root, kind, names, data):
    paths = [os.path.join(root, n) for n in names]
    if kind in ("write", "append"):
        # as the stand-in's writer: an append never creates (the file must exist on the server)
        flags = os.O_WRONLY | (os.O_APPEND if kind == "append" else os.O_CREAT | os.O_TRUNC)
        fd = os.open(paths[0], flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    elif kind == "rename":
        os.rename(paths[0], paths[1])
    elif kind == "delete":
        os.unlink(paths[0])
    elif kind == "mkdir":
        os.makedirs(paths[0], exist_ok=True)
    else:
        raise ValueError("unknown operation %r" % kind)


def serve(spool, root, name, body):
    parts = body.split(b"\0")
    kind, data = parts[0].decode(), parts[-1]
    names = [p.decode() for p in parts[1:-1]]
    try:
        perform(root, kind, names, data)
        out = b"ok"
    except (OSError, ValueError) as e:
        out = ("err %s" % e).encode()
    tmp = os.path.join(spool, "res", "." + name)
    with open(tmp, "wb") as f:
        f.write(out)
    os.rename(tmp, os.path.join(spool, "res", name))


def main():
    spool, root = sys.argv[1], sys.argv[2]
    req = os.path.join(spool, "req")
    open(os.path.join(spool, "ready"), "w").close()
    while not os.path.exists(os.path.join(spool, "stop")):
        for name in os.listdir(req):
            if name.startswith("."):
                continue
            path = os.path.join(req, name)
            with open(path, "rb") as f:
                body = f.read()
            os.unlink(path)
            threading.Thread(target=serve, args=(spool, root, name, body), daemon=True).start()
        time.sleep(0.01)


if __name__ == "__main__":
    main()
