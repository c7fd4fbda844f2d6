#!/usr/bin/python3
"""Lab SMTP server for nfs-guard tests (run with Debian's /usr/bin/python3, which has aiosmtpd).

Listens on one address:
  port 25   plain SMTP, no AUTH, no STARTTLS
  port 587  submission: STARTTLS offered and required, AUTH (PLAIN/LOGIN) required
  port 465  implicit TLS (SMTPS), AUTH (PLAIN/LOGIN) required
On every port a recipient whose local part starts with "reject" gets a 550.

Every accepted message is written as ONE file in a Maildir: written to MAILDIR/tmp/ and renamed into
MAILDIR/new/<ns-timestamp>.<seq>.<port>.eml, so sorting the names gives arrival order. The file is the
raw DATA as received, preceded by lab headers:
  X-Lab-Port, X-Lab-Envelope-From, X-Lab-Envelope-To (comma separated), X-Lab-Auth-User (or "-"),
  X-Lab-TLS ("starttls", "implicit" or "none").
"""
import argparse
import asyncio
import os
import ssl
import sys
import time

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

SEQ = 0


class Handler:
    def __init__(self, maildir, port, tls_mode):
        self.maildir = maildir
        self.port = port
        self.tls_mode = tls_mode

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: recipient rejected by lab (local part starts with 'reject')" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        global SEQ
        SEQ += 1
        tls = self.tls_mode
        if tls == "starttls" and session.ssl is None:
            tls = "none"
        user = "-"
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            user = session.auth_data.login.decode("utf-8", "replace")
        elif session.authenticated:
            user = str(session.auth_data)
        head = (
            "X-Lab-Port: %d\r\n"
            "X-Lab-Envelope-From: %s\r\n"
            "X-Lab-Envelope-To: %s\r\n"
            "X-Lab-Auth-User: %s\r\n"
            "X-Lab-TLS: %s\r\n"
        ) % (self.port, envelope.mail_from, ",".join(envelope.rcpt_tos), user, tls)
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        name = "%020d.%06d.%d.eml" % (time.time_ns(), SEQ, self.port)
        tmp = os.path.join(self.maildir, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(head.encode("ascii", "replace"))
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.maildir, "new", name))
        return "250 2.0.0 OK queued as %s" % name


def make_authenticator(user, password):
    def authenticator(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = auth_data.login == user.encode() and auth_data.password == password.encode()
        # handled=False: aiosmtpd then answers "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)
    return authenticator


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--maildir", required=True)
    ap.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password-file", required=True)
    ap.add_argument("--hostname", default="mail.lab")
    a = ap.parse_args()

    with open(a.password_file) as f:
        password = f.read()
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(a.maildir, sub), exist_ok=True)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    auth = make_authenticator(a.user, password)

    def factory(port, **kw):
        tls_mode = "implicit" if port == 465 else ("starttls" if kw.get("tls_context") else "none")
        return lambda: SMTP(Handler(a.maildir, port, tls_mode), hostname=a.hostname,
                            ident="nfs-guard-lab-smtpd", timeout=60, **kw)

    async def serve():
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(factory(25), a.addr, 25, reuse_address=True),
            await loop.create_server(
                factory(587, tls_context=ctx, require_starttls=True, auth_required=True,
                        auth_require_tls=True, authenticator=auth),
                a.addr, 587, reuse_address=True),
            # Implicit TLS: the transport is TLS already, aiosmtpd does not know it, hence
            # auth_require_tls=False (AUTH is still required).
            await loop.create_server(
                factory(465, auth_required=True, auth_require_tls=False, authenticator=auth),
                a.addr, 465, ssl=ctx, reuse_address=True),
        ]
        print("lab smtpd listening on %s:25,587,465" % a.addr, flush=True)
        await asyncio.gather(*(s.serve_forever() for s in servers))

    import warnings
    warnings.simplefilter("ignore")
    asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
