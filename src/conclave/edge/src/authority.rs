//! Accept the `:authority` that some etcd clients send as a whole URL.
//!
//! `etcdctl --cluster`, and clients built the same way, dial each member with its client URL as
//! the gRPC target, so their `:authority` is `http://127.0.0.1:2379`. grpc-go (etcd) takes it;
//! the h2 crate refuses the request as malformed (RST_STREAM PROTOCOL_ERROR) and has no option to
//! relax that. [`AuthorityFix`] sits between the socket and h2 on the inbound side only:
//!
//! * It decodes the connection's first request header block (HPACK, with a decoder of its own).
//!   If that block's `:authority` is absent or valid, the block and everything after it pass
//!   through untouched, and from then on reads go straight to the socket: a well-behaved client
//!   costs one header decode per connection.
//! * Otherwise the connection is rewritten for its whole life: every header block is decoded
//!   (keeping the client's HPACK dynamic table in step) and re-encoded for h2 as literals that
//!   h2 does not index, with `:authority` reduced to its host\[:port\] (or dropped when even that
//!   is not an authority). Every other frame passes through as it came.
//!
//! Anything it cannot make sense of (an oversized frame, a block HPACK cannot decode) is passed
//! through raw, and the connection switches to passthrough: h2 then reports the error exactly as
//! it would have without this layer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEAD: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload a client may send before the server raises SETTINGS_MAX_FRAME_SIZE
/// (the edge never does): also the size our re-encoded frames are cut to.
const MAX_FRAME: usize = 16_384;
/// A header block (HEADERS + CONTINUATIONs) larger than this passes through raw (h2 limits it).
const MAX_BLOCK: usize = 2 << 20;

#[derive(PartialEq, Eq, Clone, Copy)]
enum Mode {
    Sniff,
    Rewrite,
    Pass,
}

struct Block {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
    raw: BytesMut,
}

pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    preface_left: usize,
    inbuf: BytesMut,
    outbuf: BytesMut,
    eof: bool,
    block: Option<Block>,
    decoder: hpack::Decoder<'static>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            mode: Mode::Sniff,
            preface_left: PREFACE_LEN,
            inbuf: BytesMut::new(),
            outbuf: BytesMut::new(),
            eof: false,
            block: None,
            decoder: hpack::Decoder::new(),
        }
    }

    fn give_up(&mut self) {
        if let Some(b) = self.block.take() {
            self.outbuf.extend_from_slice(&b.raw);
        }
        let rest = self.inbuf.split();
        self.outbuf.extend_from_slice(&rest);
        self.mode = Mode::Pass;
    }

    /// Move every complete frame of `inbuf` to `outbuf`, rewriting header blocks as needed.
    fn process(&mut self) {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.inbuf.len());
            let p = self.inbuf.split_to(n);
            self.outbuf.extend_from_slice(&p);
            self.preface_left -= n;
            if self.preface_left > 0 {
                return;
            }
        }
        while self.mode != Mode::Pass && self.inbuf.len() >= FRAME_HEAD {
            let h = &self.inbuf[..FRAME_HEAD];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let kind = h[3];
            let flags = h[4];
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            if len > MAX_FRAME {
                self.give_up();
                return;
            }
            if self.inbuf.len() < FRAME_HEAD + len {
                return;
            }
            let frame = self.inbuf.split_to(FRAME_HEAD + len);
            match (kind, self.block.is_some()) {
                (HEADERS, false) => {
                    let mut payload = &frame[FRAME_HEAD..];
                    let mut pad = 0usize;
                    if flags & PADDED != 0 {
                        if payload.is_empty() {
                            self.outbuf.extend_from_slice(&frame);
                            self.give_up();
                            return;
                        }
                        pad = payload[0] as usize;
                        payload = &payload[1..];
                    }
                    let mut priority = None;
                    if flags & PRIORITY != 0 {
                        if payload.len() < 5 {
                            self.outbuf.extend_from_slice(&frame);
                            self.give_up();
                            return;
                        }
                        let mut p = [0u8; 5];
                        p.copy_from_slice(&payload[..5]);
                        priority = Some(p);
                        payload = &payload[5..];
                    }
                    if pad > payload.len() {
                        self.outbuf.extend_from_slice(&frame);
                        self.give_up();
                        return;
                    }
                    let fragment = BytesMut::from(&payload[..payload.len() - pad]);
                    self.block = Some(Block { stream, flags, priority, fragment, raw: frame });
                }
                (CONTINUATION, true) => {
                    let b = self.block.as_mut().unwrap();
                    if b.stream != stream || b.raw.len() + frame.len() > MAX_BLOCK {
                        self.outbuf.extend_from_slice(&frame);
                        self.give_up();
                        return;
                    }
                    b.fragment.extend_from_slice(&frame[FRAME_HEAD..]);
                    b.raw.extend_from_slice(&frame);
                    b.flags |= flags & END_HEADERS;
                }
                (_, true) => {
                    // Only CONTINUATION may follow an unfinished block: let h2 say so.
                    self.outbuf.extend_from_slice(&frame);
                    self.give_up();
                    return;
                }
                (_, false) => {
                    self.outbuf.extend_from_slice(&frame);
                    continue;
                }
            }
            if self.block.as_ref().is_some_and(|b| b.flags & END_HEADERS != 0) {
                let b = self.block.take().unwrap();
                self.finish_block(b);
            }
        }
        if self.mode == Mode::Pass && !self.inbuf.is_empty() {
            let rest = self.inbuf.split();
            self.outbuf.extend_from_slice(&rest);
        }
    }

    fn finish_block(&mut self, b: Block) {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let ok = self
            .decoder
            .decode_with_cb(&b.fragment, |n, v| headers.push((n.into_owned(), v.into_owned())))
            .is_ok();
        if !ok {
            self.outbuf.extend_from_slice(&b.raw);
            self.give_up();
            return;
        }
        let bad = headers.iter().any(|(n, v)| n == b":authority" && !valid_authority(v));
        if self.mode == Mode::Sniff && !bad {
            self.outbuf.extend_from_slice(&b.raw);
            self.give_up();
            return;
        }
        self.mode = Mode::Rewrite;
        let mut block = BytesMut::with_capacity(b.fragment.len() + 64);
        for (n, v) in &headers {
            if n == b":authority" {
                match repair_authority(v) {
                    Some(fixed) => encode_literal(&mut block, n, fixed),
                    None => continue,
                }
            } else {
                encode_literal(&mut block, n, v);
            }
        }
        self.emit_block(b.stream, b.flags & END_STREAM, b.priority, block);
    }

    fn emit_block(&mut self, stream: u32, end_stream: u8, priority: Option<[u8; 5]>, mut block: BytesMut) {
        let mut first = true;
        loop {
            let room = if first && priority.is_some() { MAX_FRAME - 5 } else { MAX_FRAME };
            let chunk = block.split_to(room.min(block.len()));
            let last = block.is_empty();
            let mut flags = if last { END_HEADERS } else { 0 };
            let kind = if first { HEADERS } else { CONTINUATION };
            let mut len = chunk.len();
            if first {
                flags |= end_stream;
                if priority.is_some() {
                    flags |= PRIORITY;
                    len += 5;
                }
            }
            self.outbuf.put_uint(len as u64, 3);
            self.outbuf.put_u8(kind);
            self.outbuf.put_u8(flags);
            self.outbuf.put_u32(stream);
            if first {
                if let Some(p) = priority {
                    self.outbuf.extend_from_slice(&p);
                }
            }
            self.outbuf.extend_from_slice(&chunk);
            first = false;
            if last {
                return;
            }
        }
    }
}

fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// `http://host:port/path` -> `host:port`; None when no valid authority remains.
fn repair_authority(v: &[u8]) -> Option<&[u8]> {
    let mut s = v;
    if let Some(i) = s.windows(3).position(|w| w == b"://") {
        s = &s[i + 3..];
    }
    if let Some(i) = s.iter().position(|&c| c == b'/' || c == b'?' || c == b'#') {
        s = &s[..i];
    }
    (!s.is_empty() && valid_authority(s)).then_some(s)
}

fn encode_int(dst: &mut BytesMut, first: u8, prefix_bits: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        dst.put_u8(first | value as u8);
        return;
    }
    dst.put_u8(first | max as u8);
    value -= max;
    while value >= 128 {
        dst.put_u8((value % 128) as u8 | 0x80);
        value /= 128;
    }
    dst.put_u8(value as u8);
}

/// HPACK "literal header field without indexing, new name", both strings raw (no Huffman).
fn encode_literal(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_u8(0x00);
    encode_int(dst, 0, 7, name.len());
    dst.extend_from_slice(name);
    encode_int(dst, 0, 7, value.len());
    dst.extend_from_slice(value);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if !me.outbuf.is_empty() {
                let n = me.outbuf.len().min(buf.remaining());
                buf.put_slice(&me.outbuf[..n]);
                me.outbuf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if me.mode == Mode::Pass && me.inbuf.is_empty() && me.block.is_none() {
                return Pin::new(&mut me.inner).poll_read(cx, buf);
            }
            if me.eof {
                me.give_up();
                if me.outbuf.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        me.eof = true;
                    } else {
                        me.inbuf.extend_from_slice(rb.filled());
                        me.process();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_a_url_authority() {
        assert_eq!(repair_authority(b"http://127.0.0.1:2379"), Some(&b"127.0.0.1:2379"[..]));
        assert_eq!(repair_authority(b"https://h:1/x?y"), Some(&b"h:1"[..]));
        assert_eq!(repair_authority(b"#initially=[x]"), None);
        assert!(valid_authority(b"127.0.0.1:2379"));
        assert!(!valid_authority(b"http://127.0.0.1:2379"));
    }

    #[test]
    fn integers_use_the_prefix_then_continuation_bytes() {
        let mut b = BytesMut::new();
        encode_int(&mut b, 0, 7, 10);
        encode_int(&mut b, 0, 7, 200);
        assert_eq!(&b[..], &[10, 127, 73][..]);
        let mut b = BytesMut::new();
        encode_int(&mut b, 0, 7, 127 + 300);
        assert_eq!(&b[..], &[127, 0xac, 0x02][..]);
    }
}
