//! An upstream echo server: every request is answered 200 with a JSON body
//! describing what arrived (method, path, headers, body), so tests can assert
//! exactly what appguard let through. Also records every request it saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{json, Value};

/// What the echo server received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Headers, names lower case, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Trailers after a chunked body, names lower case, in order.
    pub trailers: Vec<(String, String)>,
}

impl Seen {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running echo server; stopped on drop.
pub struct Upstream {
    /// Its port on 127.0.0.1.
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

/// A handler that turns a received request into (status, headers, body).
pub type Handler = Arc<dyn Fn(&Seen) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync>;

impl Upstream {
    /// Starts the echo server.
    pub fn start() -> Upstream {
        Upstream::with_handler(Arc::new(|s: &Seen| {
            let body = json!({
                "method": s.method,
                "path": s.path,
                "headers": s.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<Value>>(),
                "body": String::from_utf8_lossy(&s.body),
            });
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                body.to_string().into_bytes(),
            )
        }))
    }

    /// Starts a server that answers with `handler` (e.g. a JWKS endpoint).
    pub fn with_handler(handler: Handler) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (seen3, handler) = (seen2.clone(), handler.clone());
                thread::spawn(move || serve(conn, &seen3, &handler));
            }
        });
        Upstream { port, seen, stop }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("upstream received no request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut out = write_half;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut trailers = Vec::new();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            (body, trailers) = read_chunked(&mut reader);
        }
        let s = Seen {
            method,
            path,
            headers,
            body,
            trailers,
        };
        // Recorded before the handler answers: a test that changes what the
        // handler serves and then waits for "the next request" must not
        // count one that arrived before the change (and was answered from
        // what it was before).
        if let Ok(mut v) = seen.lock() {
            v.push(s.clone());
        }
        let (status, rh, rb) = handler(&s);
        let mut resp = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", rb.len());
        for (k, v) in rh {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        let mut bytes = resp.into_bytes();
        bytes.extend_from_slice(&rb);
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// A chunked body and the trailers after its last chunk.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> (Vec<u8>, Vec<(String, String)>) {
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line).unwrap_or(0) == 0 {
            return (body, trailers);
        }
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
            .unwrap_or(0);
        if size == 0 {
            // The trailer section, up to an empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return (body, trailers);
                }
                let line = line.trim_end();
                if line.is_empty() {
                    return (body, trailers);
                }
                if let Some((k, v)) = line.split_once(':') {
                    trailers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        if reader.read_exact(&mut chunk).is_err() {
            return (body, trailers);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}
