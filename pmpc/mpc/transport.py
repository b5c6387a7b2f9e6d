"""Direct party-to-party links: one TCP connection per pair of parties, TLS 1.3 on each, carrying
the raw bytes of the shares, under CrypTen's communicator interface.

Every message between parties travels here: CrypTen's openings and conversions (all_reduce of two
parties = send my share, receive the peer's, add), the dealer's tuples, the start-up key
agreement (:mod:`pmpc.mpc.handshake`) and the JSON control frames (:mod:`pmpc.mpc.wire`). There is no
other path: torch.distributed is used only for its key-value store (``TCPStore`` at the
rendezvous address, hosted by party 0), where the parties publish their listening addresses and
leave failure reports; no process group and no gloo collective is created.

Joining (:func:`join`). Each party listens on the interface it uses to reach the rendezvous host
(port chosen by the OS) and publishes ``host:port`` in the store; a party connects to every party
of lower rank and accepts the higher ones (client <- server <- dealer), so each pair holds exactly
one connection. The connecting side opens with a 4-byte hello (its rank and whether it speaks TLS).

TLS. Each party makes an ephemeral ECDSA P-256 key and self-signed certificate per session (the
``cryptography`` package; nothing on disk after start-up). On each link the listening party is the
TLS server and presents its certificate; TLS 1.3 only, no session tickets. Certificates are not
checked against any authority: the SHA-256 fingerprint of the server's certificate, as each side
saw it, is bound into the transcript of the pre-shared-key-authenticated X25519 exchange that
runs first on every link (:func:`pmpc.mpc.handshake.pair`). A man in the middle who terminates TLS
with a key of its own shows each side another fingerprint, so the two transcripts differ and both
sides stop ("not authenticated") before any share is sent; the connecting side is authenticated
by the same exchange (only a holder of the pre-shared key computes the confirmation tag), over a
channel whose far end is pinned. Python 3.11's ``ssl`` has no TLS-PSK, hence the certificates.

``PMPC_TLS=off`` (the same at every party) turns TLS off, for measuring the bare channel only: the
shares are then readable by anyone on the path. Parties that disagree refuse at the hello.

I/O. Each link is a non-blocking socket (an ``ssl.SSLSocket`` with TLS) driven by
:meth:`Transport._pump` in the party's one thread, which sends whatever is pending on every link
and reads whatever arrives, a message's body straight into its tensor; a sent tensor is not
copied (every call flushes before it returns). A party waiting on one peer keeps reading the others (up to a cap per link), so
two parties pushing large messages at each other cannot deadlock. Every wait is bounded: no
progress from the awaited peer for ``timeout_s`` raises :class:`LinkTimeout`, a closed connection
raises :class:`LinkClosed`; both name the peer (``pmpc_peer``, read by :mod:`pmpc.mpc.parties`).

Each message carries an 8-byte length; the receiver checks it against the size it expects (a
tensor's byte size, a control frame's cap) before reading the body, so parties out of step stop
with one line instead of misreading each other's bytes.

Statistics. Traffic between the computing parties is counted by CrypTen's own ``_logging``
decorator, exactly as CrypTen counted it on torch.distributed (one round per call; all_reduce of a
batch of tensors is one message and one round). Dealt material — whatever the dealer sends or is
asked, and FSS key words party 0 deals in ``local`` mode — is counted apart (``dealer_messages``,
``dealer_bytes``): it is no round of the computation, because it travels beside the peer exchanges.

Dealt material off the critical path. A tuple's dealt part is needed only after the opening
that uses the tuple (a Beaver triple's c after x - a and y - b are open; an FSS key's correction
words after y + r is open). :meth:`DirectCommunicator.expect` registers such a message: the next
exchange between the computing parties runs first, then the message is read (so its round trip,
and the dealer's work, overlap the peer round); :meth:`DirectCommunicator.ride` queues a dealt
message to go out right behind this party's next peer message.
"""
from __future__ import annotations

import collections
import datetime
import functools
import ipaddress
import os
import select
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
import urllib.parse

import torch

from pmpc.mpc import crypten_compat  # noqa: F401  (imports crypten with its shims)
from crypten.communicator.communicator import _logging  # noqa: E402
from crypten.communicator.distributed_communicator import DistributedCommunicator  # noqa: E402

HELLO = b"pm"
_HEADER = struct.Struct("<q")
RX_CAP = 16 << 20   # bytes buffered from a peer nobody is waiting on; beyond it TCP pushes back
READ_AHEAD = 1 << 18  # bytes read ahead of the message being waited for
_STATE: dict = {"transport": None, "store": None, "pending": None}


def tls_wanted() -> bool:
    """``PMPC_TLS``: ``on`` (default) or ``off`` (the bare channel, for measurement only)."""
    v = os.environ.get("PMPC_TLS", "on").strip().lower()
    if v not in ("on", "off", "1", "0"):
        raise ValueError(f"PMPC_TLS must be 'on' or 'off', not {v!r}")
    return v in ("on", "1")


def _who(rank: int) -> str:
    from pmpc.mpc.roles import who

    return who(rank)


class LinkClosed(ConnectionError):
    """The peer's connection went away (it died or left)."""


class LinkTimeout(TimeoutError):
    """The peer sent nothing for the timeout (it stalled or is unreachable)."""


def _closed(peer: int, why: str = "") -> LinkClosed:
    e = LinkClosed(f"connection closed by peer {_who(peer)}" + (f" ({why})" if why else ""))
    e.pmpc_peer = peer
    return e


def _stalled(peer: int, timeout_s: float) -> LinkTimeout:
    e = LinkTimeout(f"timed out after {timeout_s:.0f} s waiting for {_who(peer)}")
    e.pmpc_peer = peer
    return e


# -- one link ------------------------------------------------------------------------------------------
class Channel:
    """One connection to one peer: bytes queued out, received plaintext in. With TLS the socket
    is an ``ssl.SSLSocket`` in non-blocking mode: OpenSSL reads and writes the socket itself, one
    thread sends and receives (never two threads on one TLS session)."""

    def __init__(self, sock: socket.socket, peer: int):
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.peer = sock, peer
        self.tls = False
        self.binding = b""            # SHA-256 of the TLS server's certificate, once shaken hands
        self.ready = True             # False while the TLS handshake runs (nothing else is read)
        self.want_write = False       # the TLS handshake waits for the socket to take bytes
        self._tx: collections.deque = collections.deque()   # memoryviews of bytes to send
        self._rx = bytearray()
        self._rp = 0                  # read position in _rx
        self.eof = False
        self.error = ""
        self._scratch = memoryview(bytearray(1 << 18))
        self._sink, self._sinkpos = None, 0   # the buffer the awaited message's body is read into

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def pending(self) -> int:
        return len(self._rx) - self._rp

    # sending
    def post(self, *buffers) -> None:
        """Queue one message (8-byte length + the buffers' bytes) and send what the socket takes now."""
        self.post_raw(_HEADER.pack(sum(memoryview(b).nbytes for b in buffers)), *buffers)

    def post_raw(self, *buffers, now: bool = True) -> None:
        """Queue bytes as they are (the caller wrote the length header) and, ``now``, send what the
        socket takes. No copy: every caller flushes before it returns (or, not ``now``, queues
        immutable bytes that its next message takes along), so the tensors behind the buffers
        stay as they are meanwhile."""
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        if self.tls and sum(len(v) for v in views) <= 1 << 14:
            views = [memoryview(b"".join(views))]   # one TLS record, not one per piece
        self._tx.extend(views)
        if now:
            self.send_some()

    def send_some(self) -> int:
        """Non-blocking: send as much as the socket takes; returns bytes sent."""
        sent = 0
        while self._tx and not self.error:
            if self.tls and len(self._tx) > 1 and len(self._tx[0]) + len(self._tx[1]) <= 1 << 14:
                self._join_head()
            try:
                if self.tls:
                    n = self.sock.send(self._tx[0])
                else:
                    n = self.sock.sendmsg(list(self._tx)[:64])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except OSError as e:   # ssl.SSLError included
                self.error = e.strerror or str(e)
                self._tx.clear()
                break
            sent += n
            while n:
                head = self._tx[0]
                if n >= len(head):
                    n -= len(head)
                    self._tx.popleft()
                else:
                    self._tx[0] = head[n:]
                    n = 0
        return sent

    def _join_head(self) -> None:
        """Small queued pieces (a control frame and the answer behind it) go out as one TLS record:
        one write and one read instead of one per piece."""
        parts = [self._tx.popleft()]
        size = len(parts[0])
        while self._tx and size + len(self._tx[0]) <= 1 << 14:
            size += len(self._tx[0])
            parts.append(self._tx.popleft())
        self._tx.appendleft(memoryview(b"".join(parts)))

    # receiving
    def recv_some(self) -> int:
        """Non-blocking: read what has arrived, straight into the awaited buffer or else into a
        scratch buffer (``recv(n)`` would map and unmap n fresh bytes per call); returns bytes read.
        With TLS it reads until OpenSSL holds no more decrypted bytes (select cannot see those), or
        until READ_AHEAD bytes wait unclaimed: a large tensor then lands in its own buffer, not
        first in this one."""
        total = 0
        while True:
            into = self._sink[self._sinkpos:] if self._sink is not None else self._scratch
            try:
                n = self.sock.recv_into(into)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.eof = True
                break
            except ssl.SSLError as e:  # a record that does not authenticate: tampering on the path
                self.error, self.eof = f"TLS: {e.reason or e}", True
                break
            except OSError as e:
                self.error, self.eof = e.strerror or str(e), True
                break
            if not n:
                self.eof = True
                break
            total += n
            if into is self._scratch:
                self._rx += self._scratch[:n]
            else:
                self._sinkpos += n
                if self._sinkpos == len(self._sink):
                    self._sink = None
            if not self.tls:
                break
            if self._sink is None and self.pending >= READ_AHEAD and not self.sock.pending():
                break   # the rest waits in the kernel (select sees it) until a buffer is posted for it
        return total

    def _compact(self) -> None:
        if self._rp > (1 << 20) and self._rp > len(self._rx) // 2:
            del self._rx[:self._rp]
            self._rp = 0

    def take(self, n: int) -> bytes:
        with memoryview(self._rx) as m:   # released at once: a held view would pin _rx's size
            out = bytes(m[self._rp:self._rp + n])
        self._rp += n
        self._compact()
        return out

    def fill(self, dst) -> bool:
        """Copy what is buffered into ``dst``; when that is short, the rest will be read straight
        into it (no buffer in between) as it arrives. True when ``dst`` is full already."""
        dst = memoryview(dst).cast("B")   # slices of a view write through (a bytearray's would copy)
        k = min(self.pending, len(dst))
        if k:
            with memoryview(self._rx) as m:
                dst[:k] = m[self._rp:self._rp + k]
            self._rp += k
            self._compact()
        if k < len(dst):
            self._sink, self._sinkpos = dst, k
            return False
        return True


# -- the links of one party ----------------------------------------------------------------------------
class Transport:
    """This party's links, by peer rank; every operation waits at most ``timeout_s`` without progress."""

    def __init__(self, rank: int, channels: dict, timeout_s: float, tls: bool):
        self.rank, self.channels, self.timeout_s, self.tls = rank, channels, timeout_s, tls
        self.lock = threading.RLock()   # a keep-alive thread may send while the main thread is idle

    def channel(self, peer: int) -> Channel:
        try:
            return self.channels[peer]
        except KeyError:
            raise ValueError(f"{_who(self.rank)} has no link to party {peer}") from None

    def binding(self, peer: int) -> bytes:
        return self.channel(peer).binding

    def _pump(self, awaited: Channel, done) -> None:
        """Move bytes on every link until ``done()``; bounded by ``timeout_s`` of no progress on ``awaited``."""
        last = time.monotonic()
        chans = list(self.channels.values())
        while True:
            for c in chans:
                if c._tx and c.send_some() and c is awaited:
                    last = time.monotonic()
            if done():
                return
            if awaited.error or awaited.eof:
                raise _closed(awaited.peer, awaited.error)
            rl = [c for c in chans if not c.eof and (c is awaited or (c.ready and c.pending < RX_CAP))]
            wl = [c for c in chans if (c._tx or c.want_write) and not c.error]
            left = self.timeout_s - (time.monotonic() - last)
            if left <= 0:
                raise _stalled(awaited.peer, self.timeout_s)
            r, w, _ = select.select(rl, wl, [], left)
            for c in r:
                if c.ready and c.recv_some() and c is awaited:
                    last = time.monotonic()

    def flush(self, peer: int | None = None) -> None:
        with self.lock:
            for p in ([peer] if peer is not None else list(self.channels)):
                c = self.channels[p]
                self._pump(c, lambda c=c: not c._tx)

    def send(self, peer: int, *buffers) -> None:
        with self.lock:
            c = self.channel(peer)
            c.post(*buffers)
            self._pump(c, lambda: not c._tx)

    def _recv_len(self, c: Channel) -> int:
        self._pump(c, lambda: c.pending >= 8)
        return _HEADER.unpack(c.take(8))[0]

    def recv_into(self, peer: int, *arrays) -> None:
        """Receive one message into ``arrays`` (writable byte buffers, filled in order)."""
        with self.lock:
            c = self.channel(peer)
            want = sum(len(a) for a in arrays)
            n = self._recv_len(c)
            if n != want:
                raise RuntimeError(f"out of step with {_who(peer)}: it sent {n} bytes where this party "
                                   f"expected {want}")
            for a in arrays:
                if not c.fill(a):
                    try:
                        self._pump(c, lambda: c._sink is None)
                    finally:
                        c._sink = None

    def recv_message(self, peer: int, check=None) -> bytes:
        """One message of any length; ``check(n)`` may refuse the announced length before the body is read."""
        with self.lock:
            c = self.channel(peer)
            n = self._recv_len(c)
            if check is not None:
                check(n)
            self._pump(c, lambda: c.pending >= n)
            return c.take(n)

    def swap(self, peer: int, data: bytes) -> bytes:
        """Send ``data``, receive the peer's message of the same length."""
        with self.lock:
            c = self.channel(peer)
            c.post(data)
            got = bytearray(len(data))
            self.recv_into(peer, got)
            self._pump(c, lambda: not c._tx)
            return bytes(got)

    def close(self) -> None:
        self.timeout_s = min(self.timeout_s, 10.0)  # deliver what is pending, briefly
        for c in self.channels.values():
            try:
                if not c.error:
                    self._pump(c, lambda c=c: not c._tx)
            except Exception:  # a peer already gone: nothing more to deliver
                pass
            try:
                c.sock.close()
            except OSError:
                pass
        self.channels = {}


# -- joining ---------------------------------------------------------------------------------------------
def _parse(rendezvous: str):
    u = urllib.parse.urlparse(rendezvous)
    if u.scheme == "tcp" and u.hostname and u.port:
        return "tcp", u.hostname, u.port
    if u.scheme == "file" and u.path:
        return "file", u.path, None
    raise ValueError(f"a rendezvous is tcp://HOST:PORT or file:///PATH, not {rendezvous!r}")


def _make_store(rendezvous: str, rank: int, n: int, timeout_s: float):
    from torch.distributed import FileStore, TCPStore

    kind, where, port = _parse(rendezvous)
    if kind == "file":
        store = FileStore(where, n)
        store.set_timeout(datetime.timedelta(seconds=timeout_s))
        return store, "127.0.0.1"
    store = TCPStore(where, port, n, rank == 0, datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
    return store, _local_address(where)


def _local_address(host: str) -> str:
    """The address of this host's interface towards ``host`` (where the peers can reach us)."""
    family, _, _, _, addr = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
    if ipaddress.ip_address(addr[0]).is_loopback:
        return addr[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)          # UDP: picks the route, sends nothing
        return s.getsockname()[0]


def _ephemeral_server_context():
    """A TLS 1.3 server context with a fresh self-signed ECDSA P-256 certificate; its fingerprint."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pmpc party")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7)).sign(key, hashes.SHA256()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = 0
    d = tempfile.mkdtemp(prefix="pmpc-tls-")  # mode 0700; ssl loads keys from files only
    try:
        path = os.path.join(d, "party.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        ctx.load_cert_chain(path)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return ctx, hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def _client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is pinned by the key agreement instead
    return ctx


def _read_exact(sock: socket.socket, n: int, deadline: float, peer: str) -> bytes:
    out = b""
    while len(out) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got = sock.recv(n - len(out))
        except socket.timeout:
            raise TimeoutError(f"timed out waiting for {peer}'s hello") from None
        if not got:
            raise ConnectionError(f"connection closed by {peer} during the hello")
        out += got
    return out


def _tls_wrap(c: Channel, server_ctx=None) -> None:
    """Make ``c`` a TLS link (server side with ``server_ctx``); the handshake runs later."""
    ctx = server_ctx or _client_context()
    c.sock = ctx.wrap_socket(c.sock, server_side=server_ctx is not None, do_handshake_on_connect=False)
    c.tls, c.ready = True, False


def _handshake_tls(t: Transport, peer: int, fingerprint: bytes = b"") -> None:
    """Run the TLS handshake on the link to ``peer`` (wrapped by :func:`_tls_wrap`);
    ``fingerprint``: this side's own certificate's, on the server side."""
    import hashlib

    c = t.channel(peer)

    def done():
        try:
            c.sock.do_handshake()
            c.ready = True
        except ssl.SSLWantReadError:
            c.want_write = False
        except ssl.SSLWantWriteError:
            c.want_write = True
        return c.ready

    try:
        t._pump(c, done)
    except ssl.SSLError as e:
        raise ConnectionError(f"TLS with {_who(peer)} failed: {e.reason or e}") from None
    c.want_write = False
    if c.sock.version() != "TLSv1.3":
        raise ConnectionError(f"{_who(peer)} negotiated {c.sock.version()}, not TLS 1.3")
    c.binding = fingerprint if c.sock.server_side else hashlib.sha256(c.sock.getpeercert(binary_form=True)).digest()


def join(rank: int, n: int, rendezvous: str, timeout_s: float, tls: bool | None = None) -> Transport:
    """Connect this party (``rank`` of ``n`` processes) to every other one; TLS on each link unless
    ``PMPC_TLS=off``. The links are not yet authenticated: :func:`pmpc.mpc.handshake.pair` does that."""
    tls = tls_wanted() if tls is None else tls
    store, host = _make_store(rendezvous, rank, n, timeout_s)
    _STATE["store"] = store
    deadline = time.monotonic() + timeout_s
    listener = None
    socks: dict = {}
    try:
        if rank < n - 1:
            listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                            backlog=n)
            port = listener.getsockname()[1]
            store.set(f"pmpc/link/{rank}", f"{host} {port}")
        for peer in range(rank):
            addr = store.get(f"pmpc/link/{peer}").decode().split()
            s = socket.create_connection((addr[0], int(addr[1])), timeout=max(1.0, deadline - time.monotonic()))
            s.sendall(HELLO + bytes([rank, int(tls)]))
            socks[peer] = s
        for _ in range(rank + 1, n):
            listener.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                s, _ = listener.accept()
            except socket.timeout:
                missing = [p for p in range(rank + 1, n) if p not in socks]
                raise TimeoutError(f"timed out after {timeout_s:.0f} s: {', '.join(map(_who, missing))} did not "
                                   "connect") from None
            hello = _read_exact(s, 4, deadline, "a connecting party")
            peer, their_tls = hello[2], hello[3]
            if hello[:2] != HELLO or not rank < peer < n or peer in socks:
                s.close()
                raise ConnectionError(f"a connection to {_who(rank)} did not open as a pmpc party of this session")
            if bool(their_tls) != tls:
                s.close()
                raise ConnectionError(f"{_who(peer)} runs with PMPC_TLS={'on' if their_tls else 'off'}, "
                                      f"{_who(rank)} with PMPC_TLS={'on' if tls else 'off'}: set it the same at every party")
            socks[peer] = s
    except BaseException:
        for s in socks.values():
            s.close()
        raise
    finally:
        if listener is not None:
            listener.close()
    _STATE["transport"] = t = links(rank, socks, timeout_s, tls)
    return t


def links(rank: int, socks: dict, timeout_s: float, tls: bool) -> Transport:
    """This party's transport on connected sockets (``{peer rank: socket}``); with ``tls``, this
    side is the TLS server towards higher ranks and the client towards lower ones."""
    t = Transport(rank, {p: Channel(s, p) for p, s in sorted(socks.items())}, timeout_s, tls)
    if tls:
        ctx, fp = _ephemeral_server_context() if any(p > rank for p in socks) else (None, b"")
        for peer, c in t.channels.items():  # before any pumping: every byte that arrives goes to TLS
            _tls_wrap(c, ctx if peer > rank else None)
        for peer in sorted(socks):  # every pair in the same (lexicographic) order: no cycle of waits
            _handshake_tls(t, peer, fp)
    return t


def current() -> Transport:
    t = _STATE["transport"]
    if t is None:
        raise RuntimeError("this process has not joined a session")
    return t


def store():
    """The rendezvous store (failure reports), or None when not joined."""
    return _STATE["store"]


def leave() -> None:
    t, _STATE["transport"] = _STATE["transport"], None
    if t is not None:
        t.close()
    _STATE["store"] = None


# -- CrypTen's communicator over the links -----------------------------------------------------------
def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements lie one after another in memory. ``is_contiguous`` alone is not
    enough: it ignores the strides of size-1 dimensions, so a one-element tensor broadcast from a
    scalar (stride 0) counts as contiguous, and its bytes cannot be viewed."""
    return t.is_contiguous() and (t.numel() != 1 or t.reshape(-1).stride(0) == 1)


def _buf(t: torch.Tensor) -> memoryview:
    """The bytes of a tensor (a CPU contiguous view or copy)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not _dense(t):
        t = t.clone(memory_format=torch.contiguous_format)
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _fill(t: torch.Tensor) -> tuple[memoryview, object]:
    """A writable byte view of ``t`` and a finisher that copies back when ``t`` is not a CPU contiguous tensor."""
    if t.device.type == "cpu" and _dense(t):
        return memoryview(t.reshape(-1).view(torch.uint8).numpy()), None
    tmp = torch.empty(t.shape, dtype=t.dtype)
    return memoryview(tmp.reshape(-1).view(torch.uint8).numpy()), lambda: t.copy_(tmp)


def _recv_tensors(tr: Transport, peer: int, tensors) -> None:
    views, fins = zip(*(_fill(t) for t in tensors)) if tensors else ((), ())
    tr.recv_into(peer, *views)
    for f in fins:
        if f is not None:
            f()


def _combine(a: torch.Tensor, b: torch.Tensor, op) -> torch.Tensor:
    from torch.distributed import ReduceOp

    if op == ReduceOp.SUM:
        return a + b
    if op == ReduceOp.BXOR:
        return a ^ b
    if op == ReduceOp.BAND:
        return a & b
    if op == ReduceOp.BOR:
        return a | b
    if op == ReduceOp.PRODUCT:
        return a * b
    if op == ReduceOp.MIN:
        return torch.minimum(a, b)
    if op == ReduceOp.MAX:
        return torch.maximum(a, b)
    raise NotImplementedError(f"reduce op {op}")


class _Done:
    def wait(self):
        return True

    def is_completed(self):
        return True


class _Later:
    def __init__(self, fn):
        self.fn, self.done = fn, False

    def wait(self):
        if not self.done:
            self.fn()
            self.done = True
        return True

    def is_completed(self):
        return self.done


def _peer_call(fn):
    """A call between the computing parties: counted by CrypTen's ``_logging``, then the messages
    :meth:`DirectCommunicator.expect` deferred to after it are read."""
    counted = _logging(fn)

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        out = counted(self, *args, **kwargs)
        self.settle()
        return out

    return call


class DirectCommunicator(DistributedCommunicator):
    """CrypTen's ``DistributedCommunicator`` API on this party's direct links. Groups are tuples of
    ranks: ``main_group`` (the computing parties), ``ttp_group`` (all, dealer included) and
    ``ttp_comm_group`` (party 0 and the dealer: the tuples' correction terms). The pickling
    methods stay refused (:mod:`pmpc.mpc.crypten_compat`)."""

    def __init__(self, transport: Transport, rank: int, world_size: int, init_ttp: bool):
        self.transport = transport
        self.rank, self.world_size = rank, world_size
        self.distributed_backend = "pmpc-tls" if transport.tls else "pmpc-tcp"
        self.reset_communication_stats()
        self._name = f"rank{rank}"
        total = world_size + (1 if init_ttp else 0)
        self.main_group = tuple(range(world_size))
        self.ttp_group = tuple(range(total))
        self.ttp_comm_group = (0, total - 1)
        self.ttp_initialized = init_ttp
        self._late: collections.deque = collections.deque()   # readers of deferred messages, in order
        self._riders: dict = {}                                 # peer -> dealt buffers behind the next message

    # -- dealt material: counted apart, read after the next peer exchange -------------------------
    def reset_communication_stats(self):
        super().reset_communication_stats()
        self.dealer_messages = 0
        self.dealer_bytes = 0

    def get_communication_stats(self):
        return {**super().get_communication_stats(), "dealer_messages": self.dealer_messages,
                "dealer_bytes": self.dealer_bytes}

    def is_dealer_link(self, peer: int) -> bool:
        """Whether traffic with ``peer`` is the dealer's (this party is the dealer, or ``peer`` is)."""
        return self.ttp_initialized and self.world_size in (peer, self.rank)

    def count_dealt(self, nbytes: int) -> None:
        # always counted: two integer additions, where reading CrypTen's ``verbose`` flag from its
        # OmegaConf config cost more than the rest of a dealt message's bookkeeping
        self.dealer_messages += 1
        self.dealer_bytes += nbytes

    def send_dealt(self, tensor, dst: int) -> None:
        """Send dealt material (not a round of the computation)."""
        buf = _buf(tensor)
        self.transport.send(dst, buf)
        self.count_dealt(buf.nbytes)

    def recv_dealt(self, tensor, src: int) -> None:
        """Receive dealt material into ``tensor`` (in place)."""
        _recv_tensors(self.transport, src, [tensor])
        self.count_dealt(tensor.numel() * tensor.element_size())

    def expect(self, reader) -> None:
        """``reader()`` reads a message after the next exchange between the computing parties (or
        at :meth:`settle`): what it fills is not used before that exchange has opened its values."""
        self._late.append(reader)

    def ride(self, dst: int, tensor) -> None:
        """Dealt ``tensor`` goes to ``dst`` right behind this party's next message to it (no wait
        of its own); ``dst`` reads it with :meth:`expect`."""
        self._riders.setdefault(dst, []).append(tensor)

    def settle(self) -> None:
        """Read every deferred message now, in the order they were expected."""
        while self._late:
            self._late.popleft()()

    def _post_riders(self, peer: int) -> None:
        for t in self._riders.pop(peer, ()):
            buf = _buf(t)
            self.transport.channel(peer).post(buf)
            self.count_dealt(buf.nbytes)

    def get_rank(self):
        return self.rank

    def get_world_size(self):
        return self.world_size

    def get_distributed_backend(self):
        return self.distributed_backend

    def _others(self, group=None):
        return [p for p in (self.main_group if group is None else group) if p != self.rank]

    def _peer(self):
        others = self._others()
        if len(others) != 1:
            raise NotImplementedError("pmpc's direct transport runs 2 computing parties")
        return others[0]

    @_peer_call
    def send(self, tensor, dst):
        self.transport.send(dst, _buf(tensor))

    @_peer_call
    def recv(self, tensor, src=None):
        result = tensor.clone()
        _recv_tensors(self.transport, self._peer() if src is None else src, [result])
        return result

    @_peer_call
    def isend(self, tensor, dst):
        self.transport.send(dst, _buf(tensor))
        return _Done()

    @_peer_call
    def irecv(self, tensor, src=None):
        src = self._peer() if src is None else src
        return _Later(lambda: _recv_tensors(self.transport, src, [tensor]))

    @_peer_call
    def scatter(self, scatter_list, src, size=None, device=None):
        if src == self.rank:
            for p in self._others():
                self.transport.send(p, _buf(scatter_list[p]))
            return scatter_list[self.rank]
        size = scatter_list[self.rank].size() if size is None else size
        tensor = torch.empty(size=size, dtype=torch.long)
        _recv_tensors(self.transport, src, [tensor])
        return tensor if device is None else tensor.to(device)

    def _exchange(self, tensors: list) -> list:
        """Send these tensors to the other computing party as ONE message; receive its same-shaped ones."""
        peer = self._peer()
        tr = self.transport
        with tr.lock:
            c = tr.channel(peer)
            c.post(*[_buf(t) for t in tensors])
            self._post_riders(peer)
            theirs = [torch.empty(t.shape, dtype=t.dtype) for t in tensors]
            _recv_tensors(tr, peer, theirs)
            tr._pump(c, lambda: not c._tx)
        return [t.to(x.device) for t, x in zip(theirs, tensors)]

    @_peer_call
    def reduce(self, input, dst, op=None, batched=False):
        from torch.distributed import ReduceOp

        op = ReduceOp.SUM if op is None else op
        xs = list(input) if batched else [input]
        if dst != self.rank:
            self.transport.send(dst, *[_buf(x) for x in xs])
            return None
        theirs = [torch.empty(x.shape, dtype=x.dtype) for x in xs]
        _recv_tensors(self.transport, self._peer(), theirs)
        out = [_combine(x, y.to(x.device), op) for x, y in zip(xs, theirs)]
        return out if batched else out[0]

    @_peer_call
    def all_reduce(self, input, op=None, batched=False):
        from torch.distributed import ReduceOp

        op = ReduceOp.SUM if op is None else op
        xs = list(input) if batched else [input]
        out = [_combine(x, y, op) for x, y in zip(xs, self._exchange(xs))]
        return out if batched else out[0]

    @_peer_call
    def gather(self, tensor, dst):
        if dst != self.rank:
            self.transport.send(dst, _buf(tensor))
            return [None]
        out = []
        for p in range(self.world_size):
            if p == self.rank:
                out.append(tensor.clone())
            else:
                t = torch.empty(tensor.shape, dtype=tensor.dtype)
                _recv_tensors(self.transport, p, [t])
                out.append(t.to(tensor.device))
        return out

    @_peer_call
    def all_gather(self, tensor):
        theirs = self._exchange([tensor])[0]
        return [tensor.clone(), theirs] if self.rank == 0 else [theirs, tensor.clone()]

    def broadcast(self, input, src, group=None, batched=False):
        if any(self.is_dealer_link(p) for p in (group or self.main_group) if p != self.rank):
            # the dealer's answers (the dealer and party 0): dealt material, not a round
            xs = list(input) if batched else [input]
            if src == self.rank:
                for p in self._others(group):
                    for x in xs:
                        self.send_dealt(x, p)
            else:
                for x in xs:
                    self.recv_dealt(x, src)
            return input
        return self._peer_broadcast(input, src, group, batched=batched)

    def _peer_broadcast(self, input, src, group=None, batched=False):
        xs = list(input) if batched else [input]
        if src == self.rank:
            for p in self._others(group):
                self.transport.send(p, *[_buf(x) for x in xs])
        else:
            _recv_tensors(self.transport, src, xs)   # in place, as torch.distributed's broadcast
        return input

    _peer_broadcast.__name__ = "broadcast"  # the name CrypTen's counter reads
    _peer_broadcast = _peer_call(_peer_broadcast)

    @_peer_call
    def barrier(self):
        if self.rank not in self.main_group:
            return
        for p in self._others():
            self.transport.swap(p, b"")


def prepare(rendezvous: str, timeout_s: float) -> None:
    """Where the next ``crypten.init()`` joins (CrypTen asks the communicator class to initialise
    itself with no address)."""
    _STATE["pending"] = (rendezvous, timeout_s)


def _initialize(cls, rank=0, world_size=1, init_ttp=False):
    from pmpc.mpc import handshake

    if _STATE["pending"] is None:
        raise RuntimeError("pmpc: call crypten_compat.init_party, not crypten.init")
    rendezvous, timeout_s = _STATE["pending"]
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    n = world_size + (1 if init_ttp else 0)
    t = join(rank, n, rendezvous, timeout_s)
    cls.instance = DirectCommunicator(t, rank, world_size, init_ttp)
    for peer in sorted(t.channels):  # authenticate every link before anything else crosses it
        label = "computing parties" if max(rank, peer) < world_size else "dealer"
        handshake.pair(rank, peer, None, label)


def _shutdown(cls):
    cls.instance = None
    leave()


def install() -> None:
    """Make CrypTen's communicator class build a :class:`DirectCommunicator` (``crypten.init``)."""
    D = DistributedCommunicator
    D.initialize = classmethod(_initialize)
    D.is_initialized = classmethod(lambda cls: cls.instance is not None)
    D.shutdown = classmethod(_shutdown)


install()
