//! The HTTP side of twisterd's RPC server: POST with HTTP Basic auth, keep-alive, the connection closed
//! after an error reply, an HTML 401 after a quarter-second pause, a body size limit.
//!
//! Written by hand on std's TcpListener: twisterd's exact connection behaviour (close after an error,
//! its 401 page and delay, refusing connections on demand for fault injection) needs control over each
//! connection's lifetime that the small HTTP server crates do not expose.

use crate::fault::Verdict;
use crate::rpc::{handle_body, Shared};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct HttpConfig {
    /// The whole expected `Authorization` header value: `Basic base64(user:password)`.
    pub authorization: String,
    pub max_body: usize,
    pub max_connections: usize,
}

const MAX_HEADER_LINE: usize = 8192;
const MAX_HEADERS: usize = 100;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const SERVER: &str = "twister-devnode/0.1 (bitcoin-json-rpc compatible)";
const PAGE_401: &str = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\"\r\n\"http://www.w3.org/TR/1999/REC-html401-19991224/loose.dtd\">\r\n<HTML>\r\n<HEAD>\r\n<TITLE>Error</TITLE>\r\n<META HTTP-EQUIV='Content-Type' CONTENT='text/html; charset=ISO-8859-1'>\r\n</HEAD>\r\n<BODY><H1>401 Unauthorized.</H1></BODY>\r\n</HTML>\r\n";

struct Request {
    method: String,
    keep_alive: bool,
    authorization: Option<String>,
    content_length: Option<usize>,
}

enum ReadError {
    /// The peer closed or went idle: nothing to answer.
    Gone,
    /// Answer with this status, then close.
    Bad(u16),
}

fn read_line(r: &mut BufReader<TcpStream>, buf: &mut String) -> Result<(), ReadError> {
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_HEADER_LINE as u64)
        .read_line(buf)
        .map_err(|_| ReadError::Gone)?;
    if n == 0 {
        return Err(ReadError::Gone);
    }
    if !buf.ends_with('\n') {
        return Err(ReadError::Bad(431));
    }
    Ok(())
}

fn read_head(r: &mut BufReader<TcpStream>) -> Result<Request, ReadError> {
    let mut line = String::new();
    read_line(r, &mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let version = parts.nth(1).unwrap_or("HTTP/1.0").to_string();
    let mut req = Request {
        method,
        keep_alive: version == "HTTP/1.1",
        authorization: None,
        content_length: None,
    };
    for _ in 0..MAX_HEADERS {
        read_line(r, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            return Ok(req);
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(ReadError::Bad(400));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" => req.authorization = Some(value.to_string()),
            "content-length" => {
                req.content_length = Some(value.parse().map_err(|_| ReadError::Bad(400))?)
            }
            "connection" if value.eq_ignore_ascii_case("close") => req.keep_alive = false,
            "connection" if value.eq_ignore_ascii_case("keep-alive") => req.keep_alive = true,
            "transfer-encoding" => return Err(ReadError::Bad(411)),
            _ => {}
        }
    }
    Err(ReadError::Bad(431))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Authorization Required",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

fn write_response(
    w: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &str,
    body: &[u8],
    close: bool,
) -> bool {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nConnection: {}\r\nContent-Length: {}\r\nContent-Type: {content_type}\r\nServer: {SERVER}\r\n{extra}\r\n",
        reason(status),
        if close { "close" } else { "keep-alive" },
        body.len()
    );
    w.write_all(head.as_bytes())
        .and_then(|_| w.write_all(body))
        .and_then(|_| w.flush())
        .is_ok()
}

fn html_error(w: &mut TcpStream, status: u16) {
    let body = format!(
        "<html><body><b>ERROR {status}</b> {}</body></html>\r\n",
        reason(status)
    );
    write_response(w, status, "text/html", "", body.as_bytes(), true);
}

/// The dev node's own `devnode_*` calls are never faulted, so faults can always be changed.
fn is_admin_call(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("method")
                .and_then(|m| m.as_str())
                .map(|m| m.starts_with("devnode_"))
        })
        .unwrap_or(false)
}

/// Serves one connection until the peer closes, an error reply, or shutdown.
fn serve_connection(stream: TcpStream, shared: &Shared, cfg: &HttpConfig) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_head(&mut reader) {
            Ok(r) => r,
            Err(ReadError::Gone) => return,
            Err(ReadError::Bad(status)) => return html_error(&mut writer, status),
        };
        if req.content_length.is_some_and(|n| n > cfg.max_body) {
            return html_error(&mut writer, 413);
        }
        let mut body = vec![0u8; req.content_length.unwrap_or(0)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if req.authorization.as_deref() != Some(cfg.authorization.as_str()) {
            // twisterd pauses before every 401 to slow down password guessing.
            std::thread::sleep(Duration::from_millis(250));
            write_response(
                &mut writer,
                401,
                "text/html",
                "WWW-Authenticate: Basic realm=\"jsonrpc\"\r\n",
                PAGE_401.as_bytes(),
                true,
            );
            return;
        }
        if req.method != "POST" {
            let page = "<html><body>\r\n<b>ERROR 404</b><br/>twister-devnode serves JSON-RPC over POST only\r\n</body></html>\r\n";
            write_response(
                &mut writer,
                404,
                "text/html; charset=utf-8",
                "",
                page.as_bytes(),
                true,
            );
            return;
        }
        let admin = is_admin_call(&body);
        let (delay, verdict) = {
            let mut f = shared.faults();
            if f.active() && !admin {
                (f.delay(Instant::now()), f.verdict())
            } else {
                (Duration::ZERO, Verdict::Serve)
            }
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let reply = match verdict {
            Verdict::Serve => {
                let reply = handle_body(shared, &body);
                // Carried out; the answer may still come late (the caller may have given up by then).
                let late = if admin {
                    Duration::ZERO
                } else {
                    shared.faults().answer_late_by(Instant::now())
                };
                if !late.is_zero() {
                    std::thread::sleep(late);
                }
                reply
            }
            Verdict::Http500 => return html_error(&mut writer, 500),
            Verdict::Busy => {
                let id = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("id").cloned());
                let v = serde_json::json!({"result": null, "error": {"code": crate::error::RPC_BUSY, "message": "Server is busy, try again later"}, "id": id});
                crate::rpc::Reply {
                    status: 500,
                    body: serde_json::to_vec(&v).unwrap_or_default(),
                    close: true,
                }
            }
        };
        // Stopping does not close a kept-alive connection: twisterd serves it on and waits for the
        // client to close it before it exits (see `serve` and main's shutdown).
        let close = reply.close || !req.keep_alive;
        if !write_response(
            &mut writer,
            reply.status,
            "application/json",
            "",
            &reply.body,
            close,
        ) || close
        {
            return;
        }
    }
}

/// Accepts connections until `stopping` is set (then the listener closes: new connections are refused);
/// one thread per connection, at most `max_connections`, counted in `active` while open.
pub fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    cfg: Arc<HttpConfig>,
    stopping: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if shared.faults().refusing(Instant::now())
            || active.load(Ordering::Relaxed) >= cfg.max_connections
        {
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let active_on_error = active.clone();
        let (shared, cfg, active) = (shared.clone(), cfg.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("rpc-conn".into())
            .spawn(move || {
                serve_connection(stream, &shared, &cfg);
                active.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            // Out of threads: the connection went down with the closure; give its slot back.
            active_on_error.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
