//! The `:authority` a gRPC client sends on a unix socket, made acceptable
//! to the HTTP/2 server.
//!
//! On a unix socket the authority names nothing, and clients fill it in
//! differently: Go and grpc-dotnet send `localhost`; gRPC C-core (Python,
//! C++, Ruby, PHP) sends the socket path without its leading slash and
//! percent-encoded (`run%2Fsealbroker%2Fgrpc.sock`) for `unix:` targets and
//! the bare name for `unix-abstract:`; grpc-java sends the path itself
//! (`/run/sealbroker/grpc.sock`). The HTTP/2 server (h2) accepts only an
//! RFC 3986 authority and resets every other request with PROTOCOL_ERROR,
//! before any service sees it.
//!
//! So the unix-socket doors read through [`UnixAuthority`], which follows the
//! client's HTTP/2 frames, decodes each request's header block ([`hpack`]),
//! and judges its `:authority` ([`judge`]):
//! - an RFC 3986 authority passes untouched;
//! - a socket-name form (printable ASCII, well-formed `%XX`) becomes `localhost`;
//! - anything else becomes `localhost` plus the [`REFUSED_HEADER`] naming why,
//!   which [`RefuseLayer`] answers with `INVALID_ARGUMENT`.
//!
//! Until a block needs a change, frames pass byte for byte, so the server's
//! HPACK table stays in step with the client's. From the first change on,
//! every block on that connection is re-encoded without the dynamic table.
//! Other frames are passed through without being buffered.

pub mod hpack;
pub mod huffman;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::codegen::http;
use tonic::transport::server::{Connected, UdsConnectInfo};

use hpack::{Decoder, Field};

/// The header a rewritten request carries when its authority was refused;
/// the value says why. Reserved: a client that sends it is refused too.
pub const REFUSED_HEADER: &str = "sealbroker-refused-authority";

/// What a socket-name authority becomes.
const LOCALHOST: &[u8] = b"localhost";
/// Longer socket-name forms are refused (a unix path is at most 108 bytes,
/// 324 percent-encoded).
const MAX_SOCKET_NAME: usize = 1024;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 endpoint accepts (RFC 9113 section 4.2); the
/// server advertises no more, so no valid header frame is larger.
const MAX_FRAME: usize = 16_384;
/// Header blocks are buffered up to this size, compressed...
const MAX_BLOCK: usize = 64 * 1024;
/// ...and decoded up to this size, well above the server's own limit.
const MAX_LIST: usize = 256 * 1024;
/// The server's SETTINGS_HEADER_TABLE_SIZE (h2's default; not changed).
const TABLE_SIZE: usize = 4096;

/// How a request's `:authority` is treated on a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An RFC 3986 authority: passed as sent.
    Keep,
    /// A socket-name form a stock client sends: served as `localhost`.
    Replace,
    /// Neither: the request is refused, for this reason.
    Refuse(&'static str),
}

/// Judges one `:authority` value sent on a unix socket.
pub fn judge(value: &[u8]) -> Verdict {
    if value.is_empty() {
        return Verdict::Replace;
    }
    if http::uri::Authority::try_from(value).is_ok() {
        return Verdict::Keep;
    }
    if value.len() > MAX_SOCKET_NAME {
        return Verdict::Refuse("is longer than 1024 bytes");
    }
    if !value.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Verdict::Refuse("contains a space, a control character or a non-ASCII byte");
    }
    let mut rest = value;
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        let escape = rest.get(at + 1..at + 3);
        if !escape.is_some_and(|e| e.iter().all(u8::is_ascii_hexdigit)) {
            return Verdict::Refuse("has a '%' that is not followed by two hex digits");
        }
        rest = &rest[at + 3..];
    }
    Verdict::Replace
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Frames pass byte for byte; blocks are only decoded, to keep the table.
    Verbatim,
    /// A block was rewritten: every block is now re-encoded.
    Reencode,
    /// Not HTTP/2 as expected: everything passes and the server judges it.
    Passthrough,
}

/// A header block being collected from HEADERS and CONTINUATION frames.
struct Pending {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, for passing them on unchanged.
    original: Vec<u8>,
}

/// The client-to-server half of one connection, as a push parser: bytes in,
/// bytes for the HTTP/2 server out.
pub struct Rewriter {
    mode: Mode,
    preface: usize,
    /// Received bytes not yet handled (an incomplete frame).
    held: Vec<u8>,
    /// Payload bytes of a passed-through frame still to come.
    pass: usize,
    pending: Option<Pending>,
    decoder: Decoder,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter {
            mode: Mode::Verbatim,
            preface: 0,
            held: Vec::new(),
            pass: 0,
            pending: None,
            decoder: Decoder::new(TABLE_SIZE, MAX_LIST),
            rewritten: 0,
        }
    }
}

impl Rewriter {
    /// How many of the next bytes may go straight to the server, unread.
    pub fn direct(&self) -> usize {
        match self.mode {
            Mode::Passthrough => usize::MAX,
            _ if self.held.is_empty() && self.preface == PREFACE.len() => self.pass,
            _ => 0,
        }
    }

    /// Records that `n` bytes (at most [`Self::direct`]) went straight through.
    pub fn skipped(&mut self, n: usize) {
        if self.mode != Mode::Passthrough {
            self.pass -= n.min(self.pass);
        }
    }

    /// Requests whose authority this connection has rewritten.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Takes `input` from the client, appending what the server should read
    /// to `out`. An error means the connection must close: a block after the
    /// first rewrite could not be followed, and passing it raw would let the
    /// server decode it against a table it no longer shares with the client.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.held.is_empty() {
            let used = self.process(input, out)?;
            self.held.extend_from_slice(&input[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.held);
            buf.extend_from_slice(input);
            let used = self.process(&buf, out)?;
            buf.drain(..used);
            self.held = buf;
        }
        Ok(())
    }

    fn process(&mut self, buf: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        let mut at = 0;
        loop {
            if self.mode == Mode::Passthrough {
                out.extend_from_slice(&buf[at..]);
                return Ok(buf.len());
            }
            if self.preface < PREFACE.len() {
                let have = (buf.len() - at).min(PREFACE.len() - self.preface);
                if buf[at..at + have] != PREFACE[self.preface..self.preface + have] {
                    // Not prior-knowledge HTTP/2: the server answers it.
                    out.extend_from_slice(&PREFACE[..self.preface]);
                    self.mode = Mode::Passthrough;
                    continue;
                }
                self.preface += have;
                at += have;
                if self.preface < PREFACE.len() {
                    return Ok(at);
                }
                out.extend_from_slice(PREFACE);
                continue;
            }
            if self.pass > 0 {
                let n = self.pass.min(buf.len() - at);
                out.extend_from_slice(&buf[at..at + n]);
                self.pass -= n;
                at += n;
                if self.pass > 0 {
                    return Ok(at);
                }
                continue;
            }
            if buf.len() - at < FRAME_HEADER {
                return Ok(at);
            }
            let head = &buf[at..at + FRAME_HEADER];
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let kind = head[3];
            let flags = head[4];
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if kind != CONTINUATION && self.pending.is_some() {
                self.anomaly("a frame interrupts a header block", &[], out)?;
                continue;
            }
            if kind != HEADERS && kind != CONTINUATION {
                out.extend_from_slice(head);
                self.pass = len;
                at += FRAME_HEADER;
                continue;
            }
            if len > MAX_FRAME {
                self.anomaly("a header frame exceeds 16384 bytes", &[], out)?;
                continue;
            }
            if buf.len() - at < FRAME_HEADER + len {
                return Ok(at);
            }
            let frame = &buf[at..at + FRAME_HEADER + len];
            at += FRAME_HEADER + len;
            self.header_frame(kind, flags, stream, frame, out)?;
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        if kind == HEADERS {
            let Some((priority, fragment)) =
                headers_payload(flags, &frame[FRAME_HEADER..]).filter(|_| stream != 0)
            else {
                return self.anomaly("a malformed HEADERS frame", frame, out);
            };
            self.pending = Some(Pending {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: fragment.to_vec(),
                original: frame.to_vec(),
            });
        } else {
            match &mut self.pending {
                Some(p) if p.stream == stream => {
                    p.original.extend_from_slice(frame);
                    p.fragment.extend_from_slice(&frame[FRAME_HEADER..]);
                }
                _ => return self.anomaly("a CONTINUATION frame outside a header block", frame, out),
            }
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.fragment.len() > MAX_BLOCK)
        {
            return self.anomaly("a header block exceeds 64 KiB", &[], out);
        }
        if flags & END_HEADERS != 0 {
            self.finish(out)?;
        }
        Ok(())
    }

    /// Something the rewriter does not follow. Before any rewrite the server
    /// gets the bytes as sent and judges them itself; after one, the
    /// connection closes.
    fn anomaly(&mut self, what: &'static str, frame: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.mode == Mode::Reencode {
            tracing::debug!(
                what,
                "closing a unix-socket connection whose HTTP/2 frames cannot be followed"
            );
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("HTTP/2 from the client: {what}"),
            ));
        }
        if let Some(p) = self.pending.take() {
            out.extend_from_slice(&p.original);
        }
        out.extend_from_slice(frame);
        self.mode = Mode::Passthrough;
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let mut fields = match self.decoder.decode(&p.fragment) {
            Ok(fields) => fields,
            Err(e) => {
                tracing::debug!(error = %e, "a header block that does not decode");
                self.pending = Some(p);
                return self.anomaly("a header block that does not decode", &[], out);
            }
        };
        let mut changed = false;
        let mut refusal = None;
        for field in fields.iter_mut().filter(|f| f.name == b":authority") {
            match judge(&field.value) {
                Verdict::Keep => continue,
                Verdict::Replace => {}
                Verdict::Refuse(why) => {
                    let shown: String = field.value.escape_ascii().to_string().chars().take(96).collect();
                    refusal = Some(format!("the :authority \"{shown}\" {why}"));
                }
            }
            changed = true;
            field.value = LOCALHOST.to_vec();
        }
        if !changed && self.mode == Mode::Verbatim {
            out.extend_from_slice(&p.original);
            return Ok(());
        }
        if changed {
            self.rewritten += 1;
        }
        self.mode = Mode::Reencode;
        fields.retain(|f| f.name != REFUSED_HEADER.as_bytes());
        if let Some(reason) = refusal {
            fields.push(Field {
                name: REFUSED_HEADER.as_bytes().to_vec(),
                value: reason.into_bytes(),
                sensitive: false,
            });
        }
        let mut block = Vec::with_capacity(p.fragment.len() + 64);
        hpack::encode(&fields, &mut block);
        write_block(&p, &block, out);
        Ok(())
    }
}

/// A HEADERS payload's priority fields and fragment, without padding.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = usize::from(*body.first()?);
        body = &body[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(body.get(..5)?.try_into().ok()?);
        body = &body[5..];
    }
    let end = body.len().checked_sub(pad)?;
    Some((priority, &body[..end]))
}

/// Writes a re-encoded block as one HEADERS frame and as many CONTINUATION
/// frames as the frame size needs.
fn write_block(p: &Pending, block: &[u8], out: &mut Vec<u8>) {
    let first_room = MAX_FRAME - if p.priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = if p.end_stream { END_STREAM } else { 0 };
    if p.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let priority = p.priority.as_ref().map_or(&[][..], |x| &x[..]);
    frame_header(out, priority.len() + first.len(), HEADERS, flags, p.stream);
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = after;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), CONTINUATION, flags, p.stream);
        out.extend_from_slice(chunk);
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A unix-socket connection whose requests' authorities are made acceptable
/// on the way in (see the module docs). Writes pass untouched.
pub struct UnixAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    out: Vec<u8>,
    out_at: usize,
    scratch: Vec<u8>,
}

impl<S> UnixAuthority<S> {
    pub fn new(inner: S) -> Self {
        UnixAuthority {
            inner,
            rewriter: Rewriter::default(),
            out: Vec::new(),
            out_at: 0,
            scratch: vec![0; 16 * 1024],
        }
    }
}

impl Connected for UnixAuthority<UnixStream> {
    type ConnectInfo = UdsConnectInfo;
    fn connect_info(&self) -> UdsConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for UnixAuthority<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = (this.out.len() - this.out_at).min(buf.remaining());
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let direct = this.rewriter.direct();
            if direct > 0 {
                // Frame payloads (DATA above all) go straight into the server's buffer.
                let room = buf.initialize_unfilled_to(direct.min(buf.remaining()));
                let mut sub = ReadBuf::new(room);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                let n = sub.filled().len();
                buf.advance(n);
                this.rewriter.skipped(n);
                return Poll::Ready(Ok(()));
            }
            let mut scratch = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut scratch))?;
            let n = scratch.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            let (rewriter, scratch, out) = (&mut this.rewriter, &this.scratch, &mut this.out);
            rewriter.push(&scratch[..n], out)?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for UnixAuthority<S> {
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

/// Answers requests that carry [`REFUSED_HEADER`] with `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseLayer;

impl<S> tower::Layer<S> for RefuseLayer {
    type Service = Refuse<S>;
    fn layer(&self, inner: S) -> Refuse<S> {
        Refuse { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Refuse<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Refuse<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(reason) = request.headers().get(REFUSED_HEADER) {
            let reason = String::from_utf8_lossy(reason.as_bytes()).into_owned();
            tracing::debug!(%reason, "refusing a request for its :authority");
            let status = tonic::Status::invalid_argument(format!(
                "{reason}; on a unix socket send \"localhost\" (Go's and grpc-dotnet's default) or the socket path"
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests;
