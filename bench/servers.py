#!/usr/bin/env python3
"""The services the benchmark tunnels to, each bound to 127.0.0.1 port 0.

    servers.py http DIR   a threaded HTTP/1.1 server (one exchange per connection):
                          GET /NAME sends DIR/NAME with os.sendfile (GET /NAME?bytes=N: its
                          first N bytes); PUT or POST to any path reads the body
                          (Content-Length or chunked) and throws it away.
    servers.py echo       echoes every byte back until the client closes; holds thousands of
                          connections at once (one selector thread).

Each prints its bound port on stdout (one line) once it is listening, then serves until killed.
"""

import os
import selectors
import socket
import sys
import threading

SINK_CHUNK = 4 << 20


def listen():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    print(s.getsockname()[1], flush=True)
    return s


def read_head(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            return None, b""
        buf += d
        if len(buf) > 65536:
            return None, b""
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def reply(c, status, body=b""):
    c.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


def sink(c, head, rest):
    """Read a request body and discard it; answer with how many bytes came."""
    headers = {}
    for line in head.split("\r\n")[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    buf = bytearray(SINK_CHUNK)
    got = len(rest)
    if "content-length" in headers:
        want = int(headers["content-length"])
        while got < want:
            n = c.recv_into(buf, min(len(buf), want - got))
            if n == 0:
                return
            got += n
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        # Good enough for a sink: read until the terminating chunk arrives.
        tail = bytes(rest[-16:])
        while not tail.endswith(b"0\r\n\r\n"):
            n = c.recv_into(buf)
            if n == 0:
                return
            got += n
            tail = (tail + bytes(buf[max(0, n - 16):n]))[-16:]
    reply(c, "200 OK", f"{got}\n".encode())


def handle_http(c, root):
    try:
        head, rest = read_head(c)
        if head is None:
            return
        method, target = head.split(" ", 2)[:2]
        if method in ("PUT", "POST"):
            sink(c, head, rest)
            return
        path, _, query = target.partition("?")
        limit = None
        for part in query.split("&"):
            if part.startswith("bytes="):
                limit = int(part[6:])
        name = os.path.basename(path) or "index.html"
        try:
            f = open(os.path.join(root, name), "rb")
        except OSError:
            reply(c, "404 Not Found")
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            if limit is not None:
                size = min(size, limit)
            hdr = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   f"Content-Length: {size}\r\nConnection: close\r\n\r\n").encode()
            if size <= 262144:  # one write: Nagle and delayed ACKs cannot stall it
                c.sendall(hdr + f.read(size))
                return
            c.sendall(hdr)
            off = 0
            while off < size:
                n = os.sendfile(c.fileno(), f.fileno(), off, size - off)
                if n == 0:
                    break
                off += n
    except OSError:
        pass
    finally:
        c.close()


def serve_http(root):
    sys.setswitchinterval(0.0005)  # the default 5 ms GIL slice shows as latency spikes
    s = listen()
    while True:
        c, _ = s.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle_http, args=(c, root), daemon=True).start()


def serve_echo():
    s = listen()
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ, None)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    c, _ = s.accept()
                except OSError:
                    continue
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.setblocking(True)
                c.settimeout(5)
                sel.register(c, selectors.EVENT_READ, 1)
                continue
            c = key.fileobj
            try:
                d = c.recv(65536)
                if d:
                    c.sendall(d)
                    continue
            except OSError:
                pass
            sel.unregister(c)
            c.close()


def main():
    try:
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    if sys.argv[1:2] == ["http"]:
        serve_http(sys.argv[2])
    elif sys.argv[1:2] == ["echo"]:
        serve_echo()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
