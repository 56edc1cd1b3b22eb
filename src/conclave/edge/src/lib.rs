//! Conclave's compiled client edge (`conclave._edge`).
//!
//! Theory of operation: a tokio runtime on its own threads owns the client listeners. Each
//! accepted connection is sniffed: the HTTP/2 preface (`PRI `) goes to h2, anything else is read
//! as HTTP/1.1. Every gRPC stream (or HTTP/1.1 request) gets an id; what arrives on it becomes an
//! [`Event`] on one shared queue. When the queue goes from empty to non-empty one byte is written
//! to a socket pair whose read end the asyncio loop watches (`loop.add_reader`), so the loop
//! wakes once per batch and `Edge.drain()` takes every queued event in one call. Python answers
//! with `Edge.send(batch)`: one call, the GIL released while the outputs are handed to the stream
//! tasks. The edge carries no business rule: it moves bytes, gRPC length prefixes and status
//! trailers.
//!
//! HTTP/1.1: a request is an `HTTP` event carrying the client's address (as grpc says a peer; gRPC
//! streams get it as `:peer` metadata). A `Content-Length` body comes with it; a chunked body
//! follows piece by piece (`HTTP_BODY`, then `HTTP_BODY_END`) as the client sends it, so a gateway
//! watch can be told create/cancel requests in a body kept open. While the answer is awaited or
//! streamed the socket is still read (the rest of that body, a pipelined next request, bounded):
//! a reset, a failed write, or the client's end of input during a chunked answer is `CANCEL`.
//!
//! On a TLS listener the first byte decides: a TLS handshake record goes to rustls with the
//! current configuration of `tls::Tls` (rebuilt when its files change), anything else gets Go's
//! answer to plain text on a TLS port and is closed. What Python should log (a reload, files that
//! do not load) travels as a `LOG` event on the same queue, so no edge thread takes the GIL.
//!
//! Limits: a gRPC message over `max_msg` bytes ends its stream with RESOURCE_EXHAUSTED; a
//! truncated message or a compressed one ends the stream; an HTTP/1.1 body over `max_msg` (all
//! its chunks together) is a 413, or the connection's close once an answer has started; a
//! protocol error closes that connection; nothing closes the member. Responses are written only as the client's HTTP/2 flow
//! control window allows; once more than `hwm` bytes wait on one stream, `send` reports the stream
//! as blocked and a `WRITABLE` event tells Python when it fell below half of that again, so Python
//! stops producing for a client that does not read.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Response};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

mod authority;
mod tls;
use authority::AuthorityFix;

const EV_OPEN: u8 = 0;
const EV_MSG: u8 = 1;
const EV_HALF_CLOSE: u8 = 2;
const EV_CANCEL: u8 = 3;
const EV_WRITABLE: u8 = 4;
const EV_HTTP: u8 = 5;
const EV_LOG: u8 = 6;
const EV_HTTP_BODY: u8 = 7;
const EV_HTTP_BODY_END: u8 = 8;

const OUT_MSG: u8 = 0;
const OUT_TRAILERS: u8 = 1;
const OUT_HTTP: u8 = 2;
const OUT_HTTP_HEAD: u8 = 3;
const OUT_HTTP_CHUNK: u8 = 4;
const OUT_HTTP_END: u8 = 5;

const RESOURCE_EXHAUSTED: u32 = 8;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;
const UNIMPLEMENTED: u32 = 12;

const DEADLINE_EXCEEDED: u32 = 4;

/// Metadata key carrying the verified TLS client certificate's common name (mutual TLS).
const PEER_CN: &str = ":tls-client-cn";
/// Metadata key (gRPC) and header name (HTTP/1.1) carrying the client's address, as grpc says it.
const PEER_ADDR: &str = ":peer";

const HTTP1_MAX_HEAD: usize = 64 * 1024;
/// Inbound back-pressure: past this many undrained request bytes a stream gets no more window.
const IN_HWM: usize = 1 << 20;
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Bytes of one stream's requests queued for Python and not yet drained: the stream's reader
/// stops handing HTTP/2 flow-control credit back to the client while this is above `IN_HWM`.
struct Inflow {
    bytes: AtomicUsize,
    drained: tokio::sync::Notify,
}

enum Event {
    Open { id: u64, path: String, meta: Vec<(String, String)> },
    Msg { id: u64, data: Bytes, flow: Arc<Inflow> },
    HalfClose { id: u64 },
    Cancel { id: u64 },
    Writable { id: u64 },
    /// An HTTP/1.1 request; `body` None: a chunked body follows as `HttpBody` events and
    /// `HttpBodyEnd`. `peer`: the client's address (`ipv4:1.2.3.4:5678`).
    Http { id: u64, method: String, path: String, headers: Vec<(String, String)>, body: Option<Bytes>, peer: Arc<str> },
    HttpBody { id: u64, data: Bytes },
    HttpBodyEnd { id: u64 },
    /// Something for the member's log (a TLS reload, files that do not load): (level, text).
    Log { level: u8, msg: String },
}

enum Out {
    Msg(Bytes),
    Trailers(u32, String),
    Http(u16, Vec<(String, String)>, Bytes),
    /// A chunked HTTP/1.1 response: the head, then chunks, then the end.
    HttpHead(u16, Vec<(String, String)>),
    HttpChunk(Bytes),
    HttpEnd,
}

struct Slot {
    tx: mpsc::UnboundedSender<Out>,
    queued: Arc<AtomicUsize>,
    blocked: Arc<AtomicBool>,
}

struct Shared {
    events: Mutex<Vec<Event>>,
    wake_w: StdUnixStream,
    streams: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
    max_msg: usize,
    hwm: usize,
    open_connections: AtomicUsize,
    /// Request bytes queued for Python (all streams), for tests and stats.
    inbound: AtomicUsize,
}

impl Shared {
    fn push(&self, ev: Event) {
        let was_empty = {
            let mut q = self.events.lock().unwrap();
            let e = q.is_empty();
            q.push(ev);
            e
        };
        if was_empty {
            // A full socket buffer means a wake-up is already pending: nothing is lost.
            let _ = (&self.wake_w).write(&[1]);
        }
    }

    fn register(&self) -> (u64, mpsc::UnboundedReceiver<Out>, mpsc::UnboundedSender<Out>, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let blocked = Arc::new(AtomicBool::new(false));
        self.streams
            .lock()
            .unwrap()
            .insert(id, Slot { tx: tx.clone(), queued: queued.clone(), blocked: blocked.clone() });
        (id, rx, tx, queued, blocked)
    }

    fn unregister(&self, id: u64) {
        self.streams.lock().unwrap().remove(&id);
    }
}

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec): bytes outside 0x20..=0x7E and '%'.
fn percent_encode(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn status_headers(code: u32, msg: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("grpc-status", HeaderValue::from(code));
    if !msg.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&percent_encode(msg)) {
            h.insert("grpc-message", v);
        }
    }
    h
}

fn grpc_response(trailers_only: Option<(u32, &str)>) -> Response<()> {
    let mut r = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    if let Some((code, msg)) = trailers_only {
        r.headers_mut().extend(status_headers(code, msg));
    }
    r
}

/// Write `data` as the client's flow-control window allows (never buffer past it in h2).
async fn write_data(s: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        s.reserve_capacity(data.len());
        let cap = match poll_fn(|cx| s.poll_capacity(cx)).await {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        s.send_data(chunk, false)?;
    }
    Ok(())
}

fn frame(msg: &Bytes) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.extend_from_slice(msg);
    b.freeze()
}

async fn read_body(mut body: RecvStream, id: u64, sh: Arc<Shared>, tx: mpsc::UnboundedSender<Out>) {
    let mut buf = BytesMut::new();
    let flow = Arc::new(Inflow { bytes: AtomicUsize::new(0), drained: tokio::sync::Notify::new() });
    loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                // Hand the window back only once Python has drained this stream below IN_HWM:
                // a client that sends faster than Python takes requests is held by flow control.
                loop {
                    let drained = flow.drained.notified();
                    if flow.bytes.load(Ordering::Acquire) <= IN_HWM {
                        break;
                    }
                    drained.await;
                }
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                while buf.len() >= 5 {
                    let compressed = buf[0];
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    if len > sh.max_msg {
                        // The words grpc.aio (grpc core) sends, so both engines answer alike.
                        let msg = format!("SERVER: Received message larger than max ({len} vs. {})", sh.max_msg);
                        let _ = tx.send(Out::Trailers(RESOURCE_EXHAUSTED, msg));
                        sh.push(Event::Cancel { id });
                        return;
                    }
                    if compressed != 0 {
                        let msg = "grpc: compressed messages are not supported".to_string();
                        let _ = tx.send(Out::Trailers(UNIMPLEMENTED, msg));
                        sh.push(Event::Cancel { id });
                        return;
                    }
                    if buf.len() < 5 + len {
                        break;
                    }
                    buf.advance(5);
                    let data = buf.split_to(len).freeze();
                    flow.bytes.fetch_add(len, Ordering::AcqRel);
                    sh.inbound.fetch_add(len, Ordering::Relaxed);
                    sh.push(Event::Msg { id, data, flow: flow.clone() });
                }
            }
            Some(Err(_)) => {
                sh.push(Event::Cancel { id });
                return;
            }
            None => {
                if buf.is_empty() {
                    sh.push(Event::HalfClose { id });
                } else {
                    let msg = "grpc: truncated message at end of stream".to_string();
                    let _ = tx.send(Out::Trailers(INTERNAL, msg));
                    sh.push(Event::Cancel { id });
                }
                return;
            }
        }
    }
}

enum Step {
    Out(Option<Out>),
    Reset,
    Shutdown,
    Deadline,
}

/// The gRPC `grpc-timeout` header: 1 to 8 digits and a unit (H M S m u n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 || !v.is_ascii() {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn handle_stream(
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    sh: Arc<Shared>,
    mut shut: watch::Receiver<bool>,
    peer: Arc<str>,
    peer_cn: Option<Arc<str>>,
) {
    let (parts, body) = req.into_parts();
    let deadline = parts
        .headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .and_then(|d| tokio::time::Instant::now().checked_add(d));
    let grpc = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        let r = Response::builder().status(415).body(()).unwrap();
        let _ = respond.send_response(r, true);
        return;
    }
    let (id, mut rx, tx, queued, blocked) = sh.register();
    let mut meta = Vec::with_capacity(parts.headers.len());
    for (k, v) in parts.headers.iter() {
        let k = k.as_str();
        if matches!(k, "content-type" | "te" | "grpc-accept-encoding" | "grpc-encoding" | "grpc-timeout") {
            continue;
        }
        if let Ok(v) = v.to_str() {
            meta.push((k.to_string(), v.to_string()));
        }
    }
    meta.push((PEER_ADDR.to_string(), peer.to_string()));
    if let Some(cn) = peer_cn {
        // A pseudo-header name no client can send: the verified client certificate's CN.
        meta.push((PEER_CN.to_string(), cn.to_string()));
    }
    sh.push(Event::Open { id, path: parts.uri.path().to_string(), meta });
    let reader = tokio::spawn(read_body(body, id, sh.clone(), tx));
    let mut send: Option<SendStream<Bytes>> = None;
    let mut cancelled = false;
    loop {
        let step = tokio::select! {
            o = rx.recv() => Step::Out(o),
            _ = poll_fn(|cx| match send.as_mut() { Some(s) => s.poll_reset(cx), None => respond.poll_reset(cx) }) => Step::Reset,
            _ = shut.changed() => Step::Shutdown,
            _ = until(deadline) => Step::Deadline,
        };
        match step {
            Step::Out(Some(Out::Msg(m))) => {
                let n = m.len();
                if send.is_none() {
                    match respond.send_response(grpc_response(None), false) {
                        Ok(s) => send = Some(s),
                        Err(_) => {
                            cancelled = true;
                            break;
                        }
                    }
                }
                let s = send.as_mut().unwrap();
                let ok = tokio::select! {
                    r = write_data(s, frame(&m)) => r.is_ok(),
                    _ = shut.changed() => {
                        let _ = s.send_trailers(status_headers(UNAVAILABLE, "conclave: server is shutting down"));
                        false
                    }
                };
                let left = queued.fetch_sub(n, Ordering::AcqRel) - n;
                if left <= sh.hwm / 2 && blocked.swap(false, Ordering::AcqRel) {
                    sh.push(Event::Writable { id });
                }
                if !ok {
                    cancelled = true;
                    break;
                }
            }
            Step::Out(Some(Out::Trailers(code, msg))) => {
                match send.as_mut() {
                    Some(s) => {
                        let _ = s.send_trailers(status_headers(code, &msg));
                    }
                    None => {
                        let _ = respond.send_response(grpc_response(Some((code, &msg))), true);
                    }
                }
                break;
            }
            Step::Out(Some(_)) | Step::Out(None) => break,
            Step::Deadline => {
                // As grpc's own servers do: the call ends with DEADLINE_EXCEEDED and its handler
                // is cancelled.
                let msg = "Deadline Exceeded";
                match send.as_mut() {
                    Some(s) => {
                        let _ = s.send_trailers(status_headers(DEADLINE_EXCEEDED, msg));
                    }
                    None => {
                        let _ = respond.send_response(grpc_response(Some((DEADLINE_EXCEEDED, msg))), true);
                    }
                }
                cancelled = true;
                break;
            }
            Step::Reset => {
                cancelled = true;
                break;
            }
            Step::Shutdown => {
                let msg = "conclave: server is shutting down";
                match send.as_mut() {
                    Some(s) => {
                        let _ = s.send_trailers(status_headers(UNAVAILABLE, msg));
                    }
                    None => {
                        let _ = respond.send_response(grpc_response(Some((UNAVAILABLE, msg))), true);
                    }
                }
                cancelled = true;
                break;
            }
        }
    }
    sh.unregister(id);
    reader.abort();
    if cancelled {
        sh.push(Event::Cancel { id });
    }
}

async fn serve_h2<S>(sock: S, sh: Arc<Shared>, mut shut: watch::Receiver<bool>, max_streams: u32, peer: Arc<str>, peer_cn: Option<Arc<str>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = match h2::server::Builder::new()
        .max_concurrent_streams(max_streams)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 22)
        .max_header_list_size(1 << 20)
        .max_send_buffer_size(1 << 20)
        .handshake::<_, Bytes>(AuthorityFix::new(sock))
        .await
    {
        Ok(c) => c,
        Err(_) => return,
    };
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            r = conn.accept() => match r {
                Some(Ok((req, respond))) => {
                    live.fetch_add(1, Ordering::AcqRel);
                    let (live, sh, shut, addr, cn) = (live.clone(), sh.clone(), shut.clone(), peer.clone(), peer_cn.clone());
                    tokio::spawn(async move {
                        handle_stream(req, respond, sh, shut, addr, cn).await;
                        live.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                _ => return,
            },
            _ = shut.changed() => break,
        }
    }
    // Shutting down. First keep driving the connection while its streams send their UNAVAILABLE
    // trailers (bounded), so those go out before the GOAWAY; then GOAWAY, and drive it until the
    // client is done, for a bounded time. A stream opened meanwhile gets UNAVAILABLE too.
    let msg = "conclave: server is shutting down";
    let flushed = tokio::time::timeout(SHUTDOWN_FLUSH / 4, async {
        let mut quiet = 0;
        while quiet < 4 {
            quiet = if live.load(Ordering::Acquire) == 0 { quiet + 1 } else { 0 };
            tokio::select! {
                r = conn.accept() => match r {
                    Some(Ok((_, mut respond))) => {
                        let _ = respond.send_response(grpc_response(Some((UNAVAILABLE, msg))), true);
                    }
                    _ => return false,
                },
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        true
    })
    .await;
    if matches!(flushed, Ok(false)) {
        return;
    }
    conn.graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_FLUSH, async {
        while let Some(r) = conn.accept().await {
            if let Ok((_, mut respond)) = r {
                let _ = respond.send_response(grpc_response(Some((UNAVAILABLE, msg))), true);
            }
        }
    })
    .await;
}

fn http1_head(status: u16, headers: &[(String, String)], length: Option<usize>, close: bool) -> String {
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    let mut has_ct = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length")
            || k.eq_ignore_ascii_case("connection")
            || k.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        has_ct |= k.eq_ignore_ascii_case("content-type");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_ct {
        head.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    match length {
        Some(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        None => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

async fn write_http1<S: AsyncWrite + Unpin>(sock: &mut S, status: u16, headers: &[(String, String)], body: &[u8], close: bool) -> bool {
    let head = http1_head(status, headers, Some(body.len()), close);
    sock.write_all(head.as_bytes()).await.is_ok() && sock.write_all(body).await.is_ok()
}

/// Where a chunked request body (RFC 9112 7.1) is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Awaiting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(usize),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last (zero) chunk: trailer fields up to the empty line.
    Trailer,
    Done,
}

#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    TooLarge,
    Malformed,
}

/// A chunked request body decoded as it arrives: `feed` takes what the read buffer holds and
/// hands back the body bytes found, so a client can keep its body open and Python sees each
/// piece at once. The data of all chunks together is bounded by `max`.
struct ChunkReader {
    state: ChunkState,
    total: usize,
    max: usize,
}

impl ChunkReader {
    fn new(max: usize) -> Self {
        ChunkReader { state: ChunkState::Size, total: 0, max }
    }

    /// Consume what `buf` holds (leaving whatever follows the body); body bytes go to `out`.
    /// `Ok(true)` once the whole body, trailers included, has been read.
    fn feed(&mut self, buf: &mut BytesMut, out: &mut Vec<Bytes>) -> Result<bool, BodyError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(i) = buf.windows(2).position(|w| w == b"\r\n") else {
                        return if buf.len() > 1024 { Err(BodyError::Malformed) } else { Ok(false) };
                    };
                    // Extensions after ';' are ignored.
                    let line = String::from_utf8_lossy(&buf[..i]).into_owned();
                    let size_text = line.split(';').next().unwrap_or("").trim();
                    if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(BodyError::Malformed);
                    }
                    let size = usize::from_str_radix(size_text, 16).map_err(|_| BodyError::Malformed)?;
                    buf.advance(i + 2);
                    if size == 0 {
                        self.state = ChunkState::Trailer;
                        continue;
                    }
                    match self.total.checked_add(size) {
                        Some(t) if t <= self.max => self.total = t,
                        _ => return Err(BodyError::TooLarge),
                    }
                    self.state = ChunkState::Data(size);
                }
                ChunkState::Data(n) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let take = n.min(buf.len());
                    out.push(buf.split_to(take).freeze());
                    self.state = if take == n { ChunkState::DataEnd } else { ChunkState::Data(n - take) };
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::Malformed);
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(i) = buf.windows(2).position(|w| w == b"\r\n") else {
                        return if buf.len() > HTTP1_MAX_HEAD { Err(BodyError::Malformed) } else { Ok(false) };
                    };
                    buf.advance(i + 2);
                    if i == 0 {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }
}

/// The client's address as grpc (core, as grpc.aio's `context.peer()`) names a peer:
/// `ipv4:1.2.3.4:5678`, `ipv6:%5B::1%5D:5678` (its brackets URI-escaped); an IPv4-mapped IPv6
/// address is said as the IPv4 one.
fn grpc_peer(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("ipv4:{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => format!("ipv4:{}:{}", v4, a.port()),
            None => format!("ipv6:%5B{}%5D:{}", a.ip(), a.port()),
        },
    }
}

/// How one HTTP/1.1 exchange ended.
enum Exchange {
    /// Answered in full: the connection may serve the next request.
    KeepAlive,
    /// Answered (or refused), or the client is gone: close the connection.
    Close,
}

/// One HTTP/1.1 connection. Each request becomes an `Http` event; a chunked request body is
/// handed to Python as it arrives (`HttpBody` events, then `HttpBodyEnd`), a `Content-Length`
/// one whole with the request. While the answer is awaited or streamed the socket is still read:
/// the rest of a chunked body, and a client that goes away (a reset; or end of input while a
/// chunked answer streams) becomes `Cancel`, as a failed write does.
async fn serve_http1<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, sh: Arc<Shared>, mut shut: watch::Receiver<bool>, peer: Arc<str>) {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        // Read one request head.
        let parsed = loop {
            let mut hdrs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hdrs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect();
                    break Some((req.method.unwrap_or("").to_string(), req.path.unwrap_or("").to_string(), headers, n));
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() > HTTP1_MAX_HEAD {
                        let _ = write_http1(&mut sock, 431, &[], b"request header too large\n", true).await;
                        return;
                    }
                }
                Err(_) => {
                    let _ = write_http1(&mut sock, 400, &[], b"malformed HTTP request\n", true).await;
                    return;
                }
            }
            let n = tokio::select! {
                r = sock.read_buf(&mut buf) => r.unwrap_or(0),
                _ = shut.changed() => 0,
            };
            if n == 0 {
                break None;
            }
        };
        let Some((method, path, headers, head_len)) = parsed else { return };
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let chunked = get("transfer-encoding").map(|v| v.to_ascii_lowercase());
        let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let (body, reader) = if let Some(te) = chunked {
            if te.trim() != "chunked" {
                let _ = write_http1(&mut sock, 501, &[], b"only the chunked transfer coding is supported\n", true).await;
                return;
            }
            buf.advance(head_len);
            (None, Some(ChunkReader::new(sh.max_msg)))
        } else {
            let clen: usize = match get("content-length").map(|v| v.trim().parse::<usize>()) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    let _ = write_http1(&mut sock, 400, &[], b"bad Content-Length\n", true).await;
                    return;
                }
            };
            if clen > sh.max_msg {
                let _ = write_http1(&mut sock, 413, &[], b"request body too large\n", true).await;
                return;
            }
            while buf.len() < head_len + clen {
                match sock.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            buf.advance(head_len);
            (Some(buf.split_to(clen).freeze()), None)
        };
        let (id, rx, _tx, queued, blocked) = sh.register();
        sh.push(Event::Http { id, method, path, headers, body, peer: peer.clone() });
        let ended = exchange(&mut sock, &mut buf, &sh, &mut shut, id, rx, &queued, &blocked, reader, close).await;
        sh.unregister(id);
        if matches!(ended, Exchange::Close) {
            return;
        }
    }
}

/// Serve request `id` until its answer is written: outputs from Python, the rest of a chunked
/// body from the client, the client going away, shutdown.
#[allow(clippy::too_many_arguments)]
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    sock: &mut S,
    buf: &mut BytesMut,
    sh: &Arc<Shared>,
    shut: &mut watch::Receiver<bool>,
    id: u64,
    mut rx: mpsc::UnboundedReceiver<Out>,
    queued: &AtomicUsize,
    blocked: &AtomicBool,
    mut reader: Option<ChunkReader>,
    close: bool,
) -> Exchange {
    let mut head_sent = false;
    // The client ended its side (EOF) after its request: a whole answer is still written, a
    // streamed one is ended (its client could not be told apart from one that left).
    let mut input_ended = false;
    let mut pieces = Vec::new();
    let gone = |sh: &Arc<Shared>| {
        sh.push(Event::Cancel { id });
        Exchange::Close
    };
    loop {
        if let Some(r) = reader.as_mut() {
            let fed = r.feed(buf, &mut pieces);
            for data in pieces.drain(..) {
                sh.push(Event::HttpBody { id, data });
            }
            match fed {
                Ok(true) => {
                    sh.push(Event::HttpBodyEnd { id });
                    reader = None;
                }
                Ok(false) => {}
                Err(e) => {
                    if !head_sent {
                        let (status, text): (u16, &[u8]) = match e {
                            BodyError::TooLarge => (413, b"request body too large\n"),
                            BodyError::Malformed => (400, b"malformed chunked body\n"),
                        };
                        let _ = write_http1(sock, status, &[], text, true).await;
                    }
                    return gone(sh);
                }
            }
        }
        // Past the body, read only to notice the client leaving (a pipelined next request waits
        // in `buf`, bounded).
        let can_read = !input_ended && (reader.is_some() || buf.len() < HTTP1_MAX_HEAD);
        let out = tokio::select! {
            o = rx.recv() => o,
            r = sock.read_buf(buf), if can_read => {
                match r {
                    Ok(0) if reader.is_none() && !head_sent => input_ended = true,
                    Ok(0) | Err(_) => return gone(sh), // a body cut short, a reset, or gone mid-stream
                    Ok(_) => {}
                }
                continue;
            }
            _ = shut.changed() => None,
        };
        match out {
            Some(Out::Http(status, hdrs, body)) => {
                // A body not read to its end, or a client whose input ended: no next request.
                let last = close || input_ended || reader.is_some();
                let ok = write_http1(sock, status, &hdrs, &body, last).await;
                return if ok && !last { Exchange::KeepAlive } else { Exchange::Close };
            }
            Some(Out::HttpHead(status, hdrs)) if !head_sent => {
                head_sent = true;
                let head = http1_head(status, &hdrs, None, close);
                if sock.write_all(head.as_bytes()).await.is_err() || input_ended {
                    return gone(sh);
                }
            }
            Some(Out::HttpChunk(c)) if head_sent => {
                let n = c.len();
                let mut ok = true;
                if n > 0 {
                    let size = format!("{n:x}\r\n");
                    ok = sock.write_all(size.as_bytes()).await.is_ok()
                        && sock.write_all(&c).await.is_ok()
                        && sock.write_all(b"\r\n").await.is_ok();
                }
                let left = queued.fetch_sub(n, Ordering::AcqRel) - n;
                if left <= sh.hwm / 2 && blocked.swap(false, Ordering::AcqRel) {
                    sh.push(Event::Writable { id });
                }
                if !ok {
                    return gone(sh);
                }
            }
            Some(Out::HttpEnd) if head_sent => {
                let ok = sock.write_all(b"0\r\n\r\n").await.is_ok();
                return if ok && !close && reader.is_none() { Exchange::KeepAlive } else { Exchange::Close };
            }
            _ => {
                if !head_sent {
                    let _ = write_http1(sock, 503, &[], b"server is shutting down\n", true).await;
                }
                return gone(sh);
            }
        }
    }
}

struct ConnCount(Arc<Shared>);

impl ConnCount {
    fn new(sh: &Arc<Shared>) -> Self {
        sh.open_connections.fetch_add(1, Ordering::Relaxed);
        ConnCount(sh.clone())
    }
}

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Read at least `want` bytes' worth of peek into `buf` (fewer when the peer closes).
async fn peek_at_least(sock: &TcpStream, buf: &mut [u8], want: usize) -> usize {
    loop {
        let n = sock.peek(buf).await.unwrap_or(0);
        if n == 0 || n >= want {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Go's test for a plain HTTP request where a TLS record header should be.
fn looks_like_http(head: &[u8]) -> bool {
    matches!(head, b"GET /" | b"HEAD " | b"POST " | b"PUT /" | b"OPTIO")
}

/// Go's answer to plain HTTP on a TLS port.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// A connection to a TLS port that does not start with a TLS handshake: a plain HTTP/1.x request
/// gets Go's 400 answer, anything else (an HTTP/2 preface, noise) just the close. What the client
/// already sent is read and dropped (bounded) so the close is a FIN, not a reset that could
/// destroy the answer.
async fn refuse_plaintext(mut sock: TcpStream, http: bool) {
    if http {
        let _ = tokio::time::timeout(Duration::from_secs(1), sock.write_all(PLAIN_HTTP_ANSWER)).await;
    }
    let _ = sock.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0usize;
        while total < 64 << 10 {
            match sock.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

async fn serve_conn(sock: TcpStream, sh: Arc<Shared>, shut: watch::Receiver<bool>, max_streams: u32, tls: Option<Arc<tls::Tls>>) {
    let _ = sock.set_nodelay(true);
    let peer: Arc<str> = match sock.peer_addr() {
        Ok(a) => Arc::from(grpc_peer(a)),
        Err(_) => Arc::from("unknown"),
    };
    if let Some(tls) = tls {
        let mut head = [0u8; 5];
        let n = tokio::time::timeout(SNIFF_TIMEOUT, peek_at_least(&sock, &mut head, 1)).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        if head[0] != 0x16 {
            let n = tokio::time::timeout(Duration::from_secs(1), peek_at_least(&sock, &mut head, 5)).await.unwrap_or(n);
            refuse_plaintext(sock, looks_like_http(&head[..n])).await;
            return;
        }
        let acceptor = tls.acceptor();
        let Ok(Ok(stream)) = tokio::time::timeout(SNIFF_TIMEOUT, acceptor.accept(sock)).await else { return };
        let _count = ConnCount::new(&sh);
        let alpn = stream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let cn: Option<Arc<str>> = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| tls::subject_cn(c.as_ref()))
            .map(Arc::from);
        match alpn.as_deref() {
            Some(b"h2") => serve_h2(stream, sh.clone(), shut, max_streams, peer, cn).await,
            Some(_) => serve_http1(stream, sh.clone(), shut, peer).await,
            None => {
                let mut stream = stream;
                let mut first = [0u8; 4];
                let read = tokio::time::timeout(SNIFF_TIMEOUT, stream.read_exact(&mut first)).await;
                if !matches!(read, Ok(Ok(_))) {
                    return;
                }
                let s = tls::Prefixed::new(first.to_vec(), stream);
                if &first == b"PRI " {
                    serve_h2(s, sh.clone(), shut, max_streams, peer, cn).await;
                } else {
                    serve_http1(s, sh.clone(), shut, peer).await;
                }
            }
        }
        return;
    }
    let mut first = [0u8; 4];
    let sniff = async {
        loop {
            let n = sock.peek(&mut first).await.unwrap_or(0);
            if n == 0 || n >= 4 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let n = tokio::time::timeout(SNIFF_TIMEOUT, sniff).await.unwrap_or(0);
    if n < 4 {
        return;
    }
    let _count = ConnCount::new(&sh);
    if &first == b"PRI " {
        serve_h2(sock, sh.clone(), shut, max_streams, peer, None).await;
    } else {
        serve_http1(sock, sh.clone(), shut, peer).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    sh: Arc<Shared>,
    mut shut: watch::Receiver<bool>,
    max_streams: u32,
    tls: Option<Arc<tls::Tls>>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => { tokio::spawn(serve_conn(sock, sh.clone(), shut.clone(), max_streams, tls.clone())); }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = shut.changed() => return,
        }
    }
}

/// The edge: listeners, their runtime, and the two queues to and from Python.
#[pyclass(module = "conclave._edge")]
struct Edge {
    shared: Arc<Shared>,
    wake_r: StdUnixStream,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    shut: watch::Sender<bool>,
    ports: Vec<u16>,
}

#[pymethods]
impl Edge {
    /// Bind every (host, port) (port 0 picks a free one) and start serving. With `cert_file` and
    /// `key_file` (PEM) the listeners whose `secure` entry is true (all of them when `secure` is
    /// not given) serve TLS; with `client_ca_file` too, clients must present a certificate it
    /// signed (mutual TLS), not revoked by `crl_file`, with one of `allowed_hostnames` (if any)
    /// in its SAN. `tls_min_version`/`tls_max_version` (`TLS1.2`, `TLS1.3`; max empty = newest)
    /// and `cipher_suites` (Go/IANA names) restrict the handshake. Changed files are reloaded
    /// for new handshakes (looked at once a second at most).
    #[new]
    #[pyo3(signature = (addrs, max_msg, max_streams=1000, workers=1, hwm=4 << 20, *, cert_file=None, key_file=None, client_ca_file=None, secure=None, crl_file=None, allowed_hostnames=None, tls_min_version=None, tls_max_version=None, cipher_suites=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        addrs: Vec<(String, u16)>,
        max_msg: usize,
        max_streams: u32,
        workers: usize,
        hwm: usize,
        cert_file: Option<String>,
        key_file: Option<String>,
        client_ca_file: Option<String>,
        secure: Option<Vec<bool>>,
        crl_file: Option<String>,
        allowed_hostnames: Option<Vec<String>>,
        tls_min_version: Option<String>,
        tls_max_version: Option<String>,
        cipher_suites: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let opts = tls::Options {
            cert_file: cert_file.clone().unwrap_or_default(),
            key_file: key_file.clone().unwrap_or_default(),
            client_ca_file,
            crl_file,
            // Blank entries (what splitting an empty flag value gives) are no names.
            allowed_hostnames: allowed_hostnames.unwrap_or_default().into_iter().filter(|h| !h.trim().is_empty()).collect(),
            min_version: tls_min_version.filter(|v| !v.is_empty()).unwrap_or_else(|| "TLS1.2".into()),
            max_version: tls_max_version.unwrap_or_default(),
            cipher_suites: cipher_suites.unwrap_or_default().into_iter().filter(|c| !c.trim().is_empty()).collect(),
        };
        let want_tls = match (&cert_file, &key_file) {
            (Some(_), Some(_)) => true,
            (None, None) if opts.client_ca_file.is_none() && opts.crl_file.is_none() && opts.allowed_hostnames.is_empty() => {
                // No TLS: the version and suite names are still checked, as etcd checks its flags.
                tls::protocol(&opts.min_version, &opts.max_version, &opts.cipher_suites).map_err(PyValueError::new_err)?;
                false
            }
            _ => {
                return Err(PyValueError::new_err(
                    "TLS needs both cert_file and key_file (client_ca_file, crl_file and allowed_hostnames only with them)",
                ))
            }
        };
        let secure = secure.unwrap_or_else(|| vec![want_tls; addrs.len()]);
        if secure.len() != addrs.len() {
            return Err(PyValueError::new_err("secure must have one entry per address"));
        }
        if !want_tls && secure.iter().any(|&s| s) {
            return Err(PyValueError::new_err("a secure listener needs cert_file and key_file"));
        }
        let (wake_r, wake_w) = StdUnixStream::pair().map_err(|e| PyOSError::new_err(e.to_string()))?;
        wake_r.set_nonblocking(true).map_err(|e| PyOSError::new_err(e.to_string()))?;
        wake_w.set_nonblocking(true).map_err(|e| PyOSError::new_err(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("conclave-edge")
            .enable_all()
            .build()
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let shared = Arc::new(Shared {
            events: Mutex::new(Vec::new()),
            wake_w,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_msg,
            hwm: hwm.max(1),
            open_connections: AtomicUsize::new(0),
            inbound: AtomicUsize::new(0),
        });
        let acceptor = if want_tls {
            let sh = shared.clone();
            let notice: tls::Notice = Box::new(move |level, msg| sh.push(Event::Log { level, msg }));
            Some(Arc::new(tls::Tls::new(opts, notice).map_err(PyValueError::new_err)?))
        } else {
            None
        };
        let (shut, shut_rx) = watch::channel(false);
        let mut ports = Vec::new();
        let mut listeners = Vec::new();
        for (host, port) in addrs {
            let addr: SocketAddr = format!("{host}:{port}")
                .parse()
                .or_else(|_| format!("[{host}]:{port}").parse())
                .or_else(|_| {
                    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                        .ok()
                        .and_then(|mut a| a.next())
                        .ok_or(())
                })
                .map_err(|_| PyValueError::new_err(format!("cannot resolve {host}:{port}")))?;
            let std_l = std::net::TcpListener::bind(addr)
                .map_err(|e| PyOSError::new_err(format!("cannot listen for etcd clients on {host}:{port}: {e}")))?;
            std_l.set_nonblocking(true).map_err(|e| PyOSError::new_err(e.to_string()))?;
            ports.push(std_l.local_addr().map_err(|e| PyOSError::new_err(e.to_string()))?.port());
            listeners.push(std_l);
        }
        for (std_l, tls_on) in listeners.into_iter().zip(secure) {
            let _guard = rt.enter();
            let l = TcpListener::from_std(std_l).map_err(|e| PyOSError::new_err(e.to_string()))?;
            let tls = if tls_on { acceptor.clone() } else { None };
            rt.spawn(accept_loop(l, shared.clone(), shut_rx.clone(), max_streams, tls));
        }
        Ok(Edge { shared, wake_r, rt: Mutex::new(Some(rt)), shut, ports })
    }

    #[getter]
    fn ports(&self) -> Vec<u16> {
        self.ports.clone()
    }

    /// The fd the asyncio loop watches: readable when events are queued.
    fn fileno(&self) -> i32 {
        self.wake_r.as_raw_fd()
    }

    fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::Relaxed)
    }

    /// Response bytes handed over by Python and not yet written to the clients (all streams).
    fn outbound_bytes(&self) -> usize {
        self.shared.streams.lock().unwrap().values().map(|s| s.queued.load(Ordering::Relaxed)).sum()
    }

    /// Request bytes received and queued for Python but not yet drained (all streams).
    fn inbound_bytes(&self) -> usize {
        self.shared.inbound.load(Ordering::Relaxed)
    }

    /// Every queued event, as (kind, id, a, b) tuples, in arrival order.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut sink = [0u8; 256];
        while let Ok(n) = (&self.wake_r).read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        let events = std::mem::take(&mut *self.shared.events.lock().unwrap());
        let out = PyList::empty(py);
        let none = py.None();
        for ev in events {
            let t = match ev {
                Event::Open { id, path, meta } => {
                    let m = PyList::empty(py);
                    for (k, v) in meta {
                        m.append((k, v))?;
                    }
                    PyTuple::new(py, [EV_OPEN.into_pyobject(py)?.into_any(), id.into_pyobject(py)?.into_any(), PyString::new(py, &path).into_any(), m.into_any()])?
                }
                Event::Msg { id, data, flow } => {
                    let n = data.len();
                    self.shared.inbound.fetch_sub(n, Ordering::Relaxed);
                    if flow.bytes.fetch_sub(n, Ordering::AcqRel) - n <= IN_HWM {
                        flow.drained.notify_one();
                    }
                    PyTuple::new(py, [EV_MSG.into_pyobject(py)?.into_any(), id.into_pyobject(py)?.into_any(), PyBytes::new(py, &data).into_any(), none.bind(py).clone()])?
                }
                Event::HalfClose { id } => PyTuple::new(py, [EV_HALF_CLOSE.into_pyobject(py)?.into_any(), id.into_pyobject(py)?.into_any(), none.bind(py).clone(), none.bind(py).clone()])?,
                Event::Cancel { id } => PyTuple::new(py, [EV_CANCEL.into_pyobject(py)?.into_any(), id.into_pyobject(py)?.into_any(), none.bind(py).clone(), none.bind(py).clone()])?,
                Event::Writable { id } => PyTuple::new(py, [EV_WRITABLE.into_pyobject(py)?.into_any(), id.into_pyobject(py)?.into_any(), none.bind(py).clone(), none.bind(py).clone()])?,
                Event::Log { level, msg } => PyTuple::new(py, [EV_LOG.into_pyobject(py)?.into_any(), 0u64.into_pyobject(py)?.into_any(), level.into_pyobject(py)?.into_any(), PyString::new(py, &msg).into_any()])?,
                Event::Http { id, method, path, headers, body, peer } => {
                    let h = PyList::empty(py);
                    for (k, v) in headers {
                        h.append((k, v))?;
                    }
                    let req = PyTuple::new(
                        py,
                        [PyString::new(py, &method).into_any(), PyString::new(py, &path).into_any(), h.into_any(), PyString::new(py, &peer).into_any()],
                    )?;
                    let body = match body {
                        Some(b) => PyBytes::new(py, &b).into_any(),
                        None => none.bind(py).clone(),
                    };
                    PyTuple::new(py, [EV_HTTP.into_pyobject(py)?.into_any(), id.into_pyobject(py)?.into_any(), req.into_any(), body])?
                }
                Event::HttpBody { id, data } => PyTuple::new(py, [EV_HTTP_BODY.into_pyobject(py)?.into_any(), id.into_pyobject(py)?.into_any(), PyBytes::new(py, &data).into_any(), none.bind(py).clone()])?,
                Event::HttpBodyEnd { id } => PyTuple::new(py, [EV_HTTP_BODY_END.into_pyobject(py)?.into_any(), id.into_pyobject(py)?.into_any(), none.bind(py).clone(), none.bind(py).clone()])?,
            };
            out.append(t)?;
        }
        Ok(out)
    }

    /// Hand a batch of outputs to their streams: (id, OUT_MSG, bytes), (id, OUT_TRAILERS, code,
    /// message), (id, OUT_HTTP, status, [(name, value)], body). Returns the ids of streams that now
    /// hold more than the high-water mark (a WRITABLE event follows when they drain).
    fn send(&self, py: Python<'_>, batch: &Bound<'_, PyList>) -> PyResult<Vec<u64>> {
        let mut outs: Vec<(u64, Out)> = Vec::with_capacity(batch.len());
        for item in batch.iter() {
            let t = item.downcast::<PyTuple>()?;
            let id: u64 = t.get_item(0)?.extract()?;
            let kind: u8 = t.get_item(1)?.extract()?;
            let out = match kind {
                OUT_MSG => {
                    let b = t.get_item(2)?;
                    let b = b.downcast::<PyBytes>()?;
                    Out::Msg(Bytes::copy_from_slice(b.as_bytes()))
                }
                OUT_TRAILERS => Out::Trailers(t.get_item(2)?.extract()?, t.get_item(3)?.extract()?),
                OUT_HTTP => {
                    let b = t.get_item(4)?;
                    let b = b.downcast::<PyBytes>()?;
                    Out::Http(t.get_item(2)?.extract()?, t.get_item(3)?.extract()?, Bytes::copy_from_slice(b.as_bytes()))
                }
                OUT_HTTP_HEAD => Out::HttpHead(t.get_item(2)?.extract()?, t.get_item(3)?.extract()?),
                OUT_HTTP_CHUNK => {
                    let b = t.get_item(2)?;
                    let b = b.downcast::<PyBytes>()?;
                    Out::HttpChunk(Bytes::copy_from_slice(b.as_bytes()))
                }
                OUT_HTTP_END => Out::HttpEnd,
                _ => return Err(PyValueError::new_err(format!("unknown output kind {kind}"))),
            };
            outs.push((id, out));
        }
        let sh = self.shared.clone();
        let blocked = py.allow_threads(move || {
            let mut blocked = Vec::new();
            let streams = sh.streams.lock().unwrap();
            for (id, out) in outs {
                let Some(slot) = streams.get(&id) else { continue };
                if let Out::Msg(m) | Out::HttpChunk(m) = &out {
                    let q = slot.queued.fetch_add(m.len(), Ordering::AcqRel) + m.len();
                    if q > sh.hwm {
                        slot.blocked.store(true, Ordering::Release);
                        blocked.push(id);
                    }
                }
                let _ = slot.tx.send(out);
            }
            blocked
        });
        Ok(blocked)
    }

    /// Stop accepting, end open streams with UNAVAILABLE, and stop the runtime (bounded).
    fn stop(&self, py: Python<'_>) {
        let _ = self.shut.send(true);
        let rt = self.rt.lock().unwrap().take();
        if let Some(rt) = rt {
            let sh = self.shared.clone();
            py.allow_threads(move || {
                // Let the connections flush their UNAVAILABLE trailers and GOAWAY (bounded).
                let deadline = std::time::Instant::now() + SHUTDOWN_FLUSH;
                while sh.open_connections.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                rt.shutdown_timeout(Duration::from_millis(100));
            });
        }
    }
}

#[pymodule]
fn _edge(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Edge>()?;
    m.add("EV_OPEN", EV_OPEN)?;
    m.add("EV_MSG", EV_MSG)?;
    m.add("EV_HALF_CLOSE", EV_HALF_CLOSE)?;
    m.add("EV_CANCEL", EV_CANCEL)?;
    m.add("EV_WRITABLE", EV_WRITABLE)?;
    m.add("EV_HTTP", EV_HTTP)?;
    m.add("EV_LOG", EV_LOG)?;
    m.add("EV_HTTP_BODY", EV_HTTP_BODY)?;
    m.add("EV_HTTP_BODY_END", EV_HTTP_BODY_END)?;
    m.add("PEER_CN", PEER_CN)?;
    m.add("PEER_ADDR", PEER_ADDR)?;
    m.add("OUT_MSG", OUT_MSG)?;
    m.add("OUT_TRAILERS", OUT_TRAILERS)?;
    m.add("OUT_HTTP", OUT_HTTP)?;
    m.add("OUT_HTTP_HEAD", OUT_HTTP_HEAD)?;
    m.add("OUT_HTTP_CHUNK", OUT_HTTP_CHUNK)?;
    m.add("OUT_HTTP_END", OUT_HTTP_END)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_told_apart_as_go_does() {
        for head in [&b"GET /"[..], b"HEAD ", b"POST ", b"PUT /", b"OPTIO"] {
            assert!(looks_like_http(head));
        }
        for head in [&b"PRI *"[..], b"DELET", b"GET", b"\x16\x03\x01\x02\x00"] {
            assert!(!looks_like_http(head));
        }
    }

    const BODY: &[u8] = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nGET /next";

    fn feed_all(r: &mut ChunkReader, buf: &mut BytesMut) -> (Result<bool, BodyError>, Vec<u8>) {
        let mut out = Vec::new();
        let res = r.feed(buf, &mut out);
        (res, out.concat())
    }

    #[test]
    fn a_chunked_body_decodes_the_same_whole_or_byte_by_byte() {
        let mut buf = BytesMut::from(BODY);
        let mut r = ChunkReader::new(1024);
        assert_eq!(feed_all(&mut r, &mut buf), (Ok(true), b"hello world".to_vec()));
        assert_eq!(&buf[..], b"GET /next"); // what follows the body stays for the next request
        let mut r = ChunkReader::new(1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut done_at = None;
        for (i, &b) in BODY.iter().enumerate() {
            buf.put_u8(b);
            let (res, data) = feed_all(&mut r, &mut buf);
            got.extend(data);
            if res == Ok(true) {
                done_at = Some(i);
                break;
            }
            assert_eq!(res, Ok(false));
        }
        assert_eq!(got, b"hello world");
        assert_eq!(done_at, Some(BODY.len() - b"GET /next".len() - 1));
    }

    #[test]
    fn data_is_handed_on_before_its_chunk_is_complete() {
        let mut r = ChunkReader::new(1024);
        let mut buf = BytesMut::from(&b"a\r\n01234"[..]);
        assert_eq!(feed_all(&mut r, &mut buf), (Ok(false), b"01234".to_vec()));
        buf.extend_from_slice(b"56789\r\n");
        assert_eq!(feed_all(&mut r, &mut buf), (Ok(false), b"56789".to_vec()));
        assert_eq!(r.state, ChunkState::Size);
    }

    #[test]
    fn chunked_bodies_over_the_limit_or_malformed_are_refused() {
        let mut r = ChunkReader::new(8);
        let mut buf = BytesMut::from(&b"5\r\nhello\r\n4\r\n"[..]);
        assert_eq!(feed_all(&mut r, &mut buf).0, Err(BodyError::TooLarge));
        let mut r = ChunkReader::new(8);
        let mut buf = BytesMut::from(&b"ffffffffffffffffffff\r\n"[..]);
        assert_eq!(feed_all(&mut r, &mut buf).0, Err(BodyError::Malformed));
        for bad in [&b"zz\r\n"[..], b"\r\n", b"+5\r\nhello\r\n", b"2\r\nhiXX"] {
            let mut r = ChunkReader::new(1024);
            let mut buf = BytesMut::from(bad);
            assert_eq!(feed_all(&mut r, &mut buf).0, Err(BodyError::Malformed), "{bad:?}");
        }
        let mut r = ChunkReader::new(1024);
        let mut buf = BytesMut::from(&[b'1'; 2000][..]);
        assert_eq!(feed_all(&mut r, &mut buf).0, Err(BodyError::Malformed)); // a size line without end
    }

    #[test]
    fn peers_are_named_as_grpc_names_them() {
        assert_eq!(grpc_peer("1.2.3.4:5678".parse().unwrap()), "ipv4:1.2.3.4:5678");
        assert_eq!(grpc_peer("[::1]:80".parse().unwrap()), "ipv6:%5B::1%5D:80");
        assert_eq!(grpc_peer("[::ffff:10.0.0.1]:9".parse().unwrap()), "ipv4:10.0.0.1:9");
    }
}
