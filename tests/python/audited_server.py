#!/usr/bin/env python3
"""A real Python rpyc server that records, after startup, every audit event
that means code is being run or loaded: the gateway's attack oracle.

Once the server listens, a ``sys.addaudithook`` appends one line per
``exec``, ``compile``, ``import``, ``open``, ``os.system``,
``subprocess.Popen``, ``os.exec*``, ``os.spawn*``, ``os.posix_spawn``,
``ctypes.dlopen`` or ``pickle.find_class`` event to ``--audit FILE``.
For an identity the gateway restricts, that file must stay empty whatever
the client sends.

Prints ``PORT <n>`` once listening; serves until killed or ``--lifetime``
seconds have passed.

--kind classic          rpyc.SlaveService (what ``rpyc_classic`` serves)
--kind classic-service  rpyc.utils.classic.SlaveService = ClassicService,
                        whose on_connect calls the client back
--kind public           a plain service with ``allow_public_attrs=True``:
                        add(a, b), get_report() -> Report (title, pages(),
                        a private ``_api_token``), call_back(f, *args)
"""
import argparse
import os
import sys
import threading
import time

import rpyc
from rpyc.utils.server import ThreadedServer

RECORDED = ("exec", "compile", "import", "open", "os.system", "subprocess.Popen", "ctypes.dlopen",
            "pickle.find_class", "os.posix_spawn")
RECORDED_PREFIXES = ("os.exec", "os.spawn")


class Report:
    title = "quarterly"
    _api_token = "secret-token"

    def pages(self):
        return 12

    def __len__(self):
        return 3


class PublicService(rpyc.Service):
    """A service written carelessly: every public attribute is reachable."""
    _api_token = "secret-token"

    def exposed_add(self, a, b):
        return a + b

    def exposed_get_report(self):
        return Report()

    def exposed_call_back(self, f, *args):
        return f(*args)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["classic", "classic-service", "public"], required=True)
    ap.add_argument("--audit", required=True, help="file the audit events are appended to")
    ap.add_argument("--lifetime", type=float, default=600.0)
    args = ap.parse_args()

    if args.kind == "classic":
        service, config = rpyc.SlaveService, {}
    elif args.kind == "classic-service":
        from rpyc.utils.classic import SlaveService
        service, config = SlaveService, {}
    else:
        service, config = PublicService, {"allow_public_attrs": True}
    server = ThreadedServer(service, hostname="127.0.0.1", port=0, auto_register=False, protocol_config=config)

    # Open the log before the hook: writing through the fd raises no event.
    fd = os.open(args.audit, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    lock = threading.Lock()

    def formatting_a_traceback():
        # rpyc sends every exception with its traceback text; formatting it
        # reads the server's own source files (linecache) and parses the
        # failing line (traceback's caret anchors). Those events carry the
        # server's own paths and lines, never the client's input.
        f = sys._getframe(2)
        while f is not None:
            name = f.f_code.co_filename
            if name.endswith(("/traceback.py", "/linecache.py")):
                return True
            # A server thread that ended with an exception: the C excepthook
            # prints its traceback the same way.
            if name.endswith("/threading.py") and f.f_code.co_name == "invoke_excepthook":
                return True
            f = f.f_back
        return False

    def hook(event, hook_args):
        if (event in RECORDED or event.startswith(RECORDED_PREFIXES)) and not formatting_a_traceback():
            line = f"{event} {hook_args!r}"[:400].replace("\n", " ") + "\n"
            with lock:
                os.write(fd, line.encode("utf-8", "replace"))

    def die_later():
        time.sleep(args.lifetime)
        os._exit(0)

    threading.Thread(target=die_later, daemon=True).start()
    server._listen()
    # Everything the server needs is imported; from here on, nothing should be.
    sys.addaudithook(hook)
    sys.stdout.write(f"PORT {server.listener.getsockname()[1]}\n")
    sys.stdout.flush()
    try:
        server.start()
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
