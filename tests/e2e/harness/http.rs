//! A small HTTP/1.1 client for tests: one request per connection, exact
//! control over headers (duplicates, odd values), no hidden normalisation.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A request to send.
#[derive(Clone, Debug)]
pub struct Req {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Request target, e.g. `/v1/sms?x=1`.
    pub path: String,
    /// Headers in order; `host` is added when missing.
    pub headers: Vec<(String, String)>,
    /// Body bytes; `content-length` is added when non-empty.
    pub body: Vec<u8>,
    /// Headers whose values are raw bytes (e.g. not UTF-8), sent after
    /// `headers`.
    pub raw_headers: Vec<(String, Vec<u8>)>,
    /// Send the body in two chunks (`transfer-encoding: chunked`, no
    /// `content-length`), as HTTP/1.1 clients stream a body.
    pub chunked: bool,
    /// With `chunked`: the body in this many chunks (2 by default), each
    /// written `gap` after the one before (the first `gap` after the
    /// headers), as a client that streams its body does. With a zero gap
    /// the whole request is one write.
    pub pieces: usize,
    /// See `pieces`.
    pub gap: Duration,
    /// Trailers after the last chunk (implies `chunked`; Envoy passes them
    /// on only with `http_protocol_options.enable_trailers`).
    pub trailers: Vec<(String, String)>,
}

impl Req {
    /// A GET with no headers.
    pub fn get(path: &str) -> Req {
        Req::new("GET", path)
    }

    /// A POST of a JSON body.
    pub fn post_json(path: &str, body: &str) -> Req {
        Req::new("POST", path)
            .header("content-type", "application/json")
            .body(body.as_bytes())
    }

    /// A request with the given method and target.
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            raw_headers: Vec::new(),
            chunked: false,
            pieces: 2,
            gap: Duration::ZERO,
            trailers: Vec::new(),
        }
    }

    /// Adds a header (repeat the call to send it twice).
    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Adds a header whose value is sent as these exact bytes.
    pub fn header_bytes(mut self, k: &str, v: &[u8]) -> Req {
        self.raw_headers.push((k.into(), v.to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, b: &[u8]) -> Req {
        self.body = b.to_vec();
        self
    }

    /// Sends the body in two chunks, its length nowhere in the headers.
    pub fn chunked(mut self) -> Req {
        self.chunked = true;
        self
    }

    /// Sends the body in `pieces` chunks, `gap` apart (see [`Req::pieces`]).
    pub fn chunked_in(mut self, pieces: usize, gap: Duration) -> Req {
        self.chunked = true;
        self.pieces = pieces.max(1);
        self.gap = gap;
        self
    }

    /// Adds a trailer, sent after the body's last chunk.
    pub fn trailer(mut self, k: &str, v: &str) -> Req {
        self.chunked = true;
        self.trailers.push((k.into(), v.into()));
        self
    }
}

/// A response.
#[derive(Clone, Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes (chunked encoding undone).
    pub body: Vec<u8>,
}

impl Resp {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// `x-appguard-reason` of a local reply.
    pub fn reason(&self) -> Option<&str> {
        self.header("x-appguard-reason")
    }
}

/// GET `path` on 127.0.0.1:`port`.
pub fn get(port: u16, path: &str) -> std::io::Result<Resp> {
    send(port, &Req::get(path))
}

/// Sends `req` to 127.0.0.1:`port` and reads the whole response.
pub fn send(port: u16, req: &Req) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(
        std::env::var("HTTP_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    )))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        head.push_str("host: localhost\r\n");
    }
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut out = head.into_bytes();
    for (k, v) in &req.raw_headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if req.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
        let size = req.body.len().div_ceil(req.pieces.max(1)).max(1);
        for part in req.body.chunks(size) {
            if !req.gap.is_zero() {
                // What is written so far goes now; a write that fails
                // (Envoy answered before the end of the body, and closed)
                // ends the sending, and the answer is read.
                if s.write_all(&out).is_err() {
                    out.clear();
                    break;
                }
                out.clear();
                std::thread::sleep(req.gap);
            }
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for (k, v) in &req.trailers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    } else {
        if !req.body.is_empty() || req.method == "POST" || req.method == "PUT" {
            out.extend_from_slice(format!("content-length: {}\r\n", req.body.len()).as_bytes());
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(&req.body);
    }
    if req.chunked && !req.gap.is_zero() {
        // (See above: an answer may have come before the body's end.)
        let _ = s.write_all(&out);
    } else {
        s.write_all(&out)?;
    }
    // Read until the response is complete (by content-length or the last
    // chunk), not until EOF: after a local reply Envoy waits for the client
    // to close first (HCM delayed_close_timeout, 1 s by default).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if response_complete(&buf, req.method.eq_ignore_ascii_case("HEAD")) {
            break;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_response(&buf)
}

/// Whether `buf` holds a whole response: its headers, and the body they
/// announce, except after a HEAD (`head`), whose response has no body
/// whatever its `content-length` says (RFC 9110 9.3.2); waiting for one
/// would wait for Envoy's delayed close (1 s) after each local reply.
fn response_complete(buf: &[u8], head: bool) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    if head {
        return true;
    }
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn parse_response(buf: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..i])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[i + 2..i + 2 + size]);
        raw = &raw[(i + 4 + size).min(raw.len())..];
    }
    out
}
