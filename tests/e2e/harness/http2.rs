//! A small HTTP/2 client for tests (h2c with prior knowledge, which
//! Envoy's listener takes: its codec is `AUTO`): one connection, streams
//! on it with the body in DATA frames of its own, trailers, resets.
//! Built on the `h2` crate tonic links already; the connection is driven
//! by a Tokio worker thread of its own, so that frames sent go out (and a
//! reset reaches Envoy) while the test waits on something else.

use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};

use super::http::{Req, Resp};

/// One HTTP/2 connection to 127.0.0.1.
pub struct H2 {
    rt: tokio::runtime::Runtime,
    client: SendRequest<Bytes>,
}

/// A stream whose request is under way: its response, and the sending
/// half (to send more of the body, or reset it).
pub struct Open {
    /// The response, once it comes.
    pub response: ResponseFuture,
    /// The request's sending half.
    pub send: SendStream<Bytes>,
}

impl H2 {
    /// Connects to 127.0.0.1:`port` and does the HTTP/2 handshake.
    pub fn connect(port: u16) -> H2 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            // Without Nagle: a stream's HEADERS and DATA frames are small
            // writes, and each would otherwise wait for the ACK of the one
            // before (Envoy delays it up to 40 ms).
            tcp.set_nodelay(true).expect("TCP_NODELAY");
            let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        });
        H2 { rt, client }
    }

    /// Runs `f` to its end on this connection's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A handle to open streams with, from async code (cheap to clone).
    pub fn client(&self) -> SendRequest<Bytes> {
        self.client.clone()
    }

    /// Sends `req` on a new stream: its headers, then its body in
    /// `pieces` DATA frames, each `gap` after the one before (the first
    /// `gap` after the headers), the last with END_STREAM (or the
    /// trailers after it, when `req` has some). Returns the response.
    pub fn send(&self, req: &Req, pieces: usize, gap: Duration) -> Resp {
        self.block_on(send(self.client(), req.clone(), pieces, gap))
            .unwrap_or_else(|e| panic!("{} {} over HTTP/2: {e}", req.method, req.path))
    }
}

/// `req`'s head as an `http::Request` (`content-length` only if `req`
/// names one).
fn head(req: &Req) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method(req.method.as_str())
        .uri(format!("http://localhost{}", req.path));
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(()).expect("request head")
}

/// Opens a stream for `req` and sends its headers and `body`, with
/// END_STREAM when `end`: else the request stays open for more (or a
/// reset).
pub async fn open(
    client: SendRequest<Bytes>,
    req: &Req,
    body: &[u8],
    end: bool,
) -> Result<Open, h2::Error> {
    let mut client = client.ready().await?;
    let (response, mut send) = client.send_request(head(req), false)?;
    if !body.is_empty() || end {
        send.send_data(Bytes::copy_from_slice(body), end)?;
    }
    Ok(Open { response, send })
}

/// Resets the stream (`CANCEL`), as a client that gives up does.
pub fn reset(open: &mut Open) {
    open.send.send_reset(Reason::CANCEL);
}

/// See [`H2::send`]; from async code, for streams sent side by side.
pub async fn send(
    client: SendRequest<Bytes>,
    req: Req,
    pieces: usize,
    gap: Duration,
) -> Result<Resp, h2::Error> {
    let mut o = open(client, &req, &[], false).await?;
    let size = req.body.len().div_ceil(pieces.max(1)).max(1);
    let chunks: Vec<&[u8]> = req.body.chunks(size).collect();
    for (i, piece) in chunks.iter().enumerate() {
        tokio::time::sleep(gap).await;
        let last = i + 1 == chunks.len() && req.trailers.is_empty();
        // A refusal may have reset the stream already.
        if o.send
            .send_data(Bytes::copy_from_slice(piece), last)
            .is_err()
        {
            break;
        }
    }
    if chunks.is_empty() && req.trailers.is_empty() {
        let _ = o.send.send_data(Bytes::new(), true);
    }
    if !req.trailers.is_empty() {
        tokio::time::sleep(gap).await;
        let mut t = http::HeaderMap::new();
        for (k, v) in &req.trailers {
            t.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("trailer name"),
                http::HeaderValue::from_str(v).expect("trailer value"),
            );
        }
        let _ = o.send.send_trailers(t);
    }
    read(o.response).await
}

/// The whole response of a stream.
pub async fn read(response: ResponseFuture) -> Result<Resp, h2::Error> {
    let (parts, mut body) = response.await?.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: bytes,
    })
}

/// Sends one request of `headers` (pseudo-headers first, as given) over a
/// fresh h2c connection, written frame by frame without an HTTP/2 library:
/// so that a header may hold bytes the `h2` crate refuses to send (a
/// `:path` with a byte that is not UTF-8, which Envoy's HTTP/2 codec
/// passes on in the query). Each header is an HPACK literal without
/// indexing, name and value under 127 bytes each. Returns whether the
/// response was `200` (`:status` as HPACK's static entry 8, as Envoy
/// sends it) and the response body, or `None` when the response did not
/// end within 5 s.
pub fn raw_request(port: u16, headers: &[(&[u8], &[u8])]) -> Option<(bool, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = u32::try_from(payload.len()).unwrap();
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut block = Vec::new();
    for (name, value) in headers {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00);
        block.push(u8::try_from(name.len()).unwrap());
        block.extend_from_slice(name);
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4 | 0x1, 1, &block)); // HEADERS, END_HEADERS | END_STREAM
    s.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut ok = None;
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        while buf.len() >= at + 9 {
            let len = usize::from(buf[at]) << 16
                | usize::from(buf[at + 1]) << 8
                | usize::from(buf[at + 2]);
            let (kind, flags) = (buf[at + 3], buf[at + 4]);
            let stream = u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]])
                & 0x7fff_ffff;
            if buf.len() < at + 9 + len {
                break;
            }
            let mut payload = &buf[at + 9..at + 9 + len];
            at += 9 + len;
            if stream != 1 || !matches!(kind, 0x0 | 0x1) {
                continue;
            }
            if flags & 0x8 != 0 {
                // PADDED: the pad length, then the padding at the end.
                let pad = usize::from(payload[0]);
                payload = &payload[1..payload.len() - pad];
            }
            if kind == 0x1 {
                if flags & 0x20 != 0 {
                    // PRIORITY: five bytes first.
                    payload = &payload[5..];
                }
                ok = Some(payload.first() == Some(&0x88));
            } else {
                body.extend_from_slice(payload);
            }
            if flags & 0x1 != 0 {
                return ok.map(|ok| (ok, body));
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
