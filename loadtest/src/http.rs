//! A minimal blocking HTTP/1.1 client over one keep-alive connection: exactly
//! what a load generator needs (no pooling, no redirects, no TLS), so the
//! runner's own cost per request stays small and visible. Bodies must carry
//! `Content-Length` (stockwire's JSON answers do); anything else is an error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};

/// Largest answer body read (a query of 1,000 SKUs is well under this).
const BODY_MAX: usize = 16 * 1024 * 1024;

/// A connection idle longer than this is opened anew before use: servers close idle
/// keep-alive connections (actix-web after 5 s), and a request written into one that
/// the server closed would be lost without the server ever seeing it.
const IDLE_MAX: Duration = Duration::from_secs(4);

/// `host:port` from `http://host:port[/]` or `host:port`.
pub fn authority(target: &str) -> anyhow::Result<String> {
    let rest = target.strip_prefix("http://").unwrap_or(target);
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || target.starts_with("https://") {
        bail!("target must be http://HOST:PORT or HOST:PORT, not {target:?}");
    }
    Ok(rest.to_string())
}

pub struct Connection {
    authority: String,
    timeout: Duration,
    reader: Option<BufReader<TcpStream>>,
    last_used: std::time::Instant,
    request: Vec<u8>,
    /// `Authorization: Bearer ...\r\n`, or empty.
    authorization: String,
}

impl Connection {
    /// A connection that connects on first use (and again after any error).
    pub fn new(authority: &str, timeout: Duration) -> Connection {
        Connection {
            authority: authority.to_string(),
            timeout,
            reader: None,
            last_used: std::time::Instant::now(),
            request: Vec::with_capacity(1024),
            authorization: String::new(),
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<&str>) -> Connection {
        self.authorization = token.map_or_else(String::new, |token| {
            format!("Authorization: Bearer {token}\r\n")
        });
        self
    }

    fn connect(&mut self) -> anyhow::Result<&mut BufReader<TcpStream>> {
        if self.reader.is_none() {
            let stream = TcpStream::connect(&self.authority)
                .with_context(|| format!("connect {}", self.authority))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            self.reader = Some(BufReader::with_capacity(64 * 1024, stream));
        }
        self.reader.as_mut().context("connected")
    }

    /// Sends one request and reads its answer. On any error the connection is
    /// dropped (the next call reconnects): the request may or may not have been applied.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        if self.last_used.elapsed() > IDLE_MAX {
            self.reader = None;
        }
        let result = self.exchange(method, path, body);
        self.last_used = std::time::Instant::now();
        if result.is_err() {
            self.reader = None;
        }
        result
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.authority,
            self.authorization,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        let request = std::mem::take(&mut self.request);
        let reader = self.connect()?;
        let written = reader.get_mut().write_all(&request);
        self.request = request;
        written?;
        let reader = self.reader.as_mut().context("connected")?;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed by the server");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("status line")?
            .parse()
            .context("status code")?;
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.parse::<usize>().context("content-length")?);
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked answers are not supported");
                }
            }
        }
        let length = match (length, status) {
            (Some(length), _) => length,
            (None, 204 | 304) => 0,
            (None, _) => bail!("an answer without Content-Length"),
        };
        if length > BODY_MAX {
            bail!("answer of {length} bytes is over {BODY_MAX}");
        }
        let mut answer = vec![0u8; length];
        reader.read_exact(&mut answer)?;
        if close {
            self.reader = None;
        }
        Ok((status, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_a_url_or_an_authority() {
        assert_eq!(
            authority("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            authority("http://127.0.0.1:8080/").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(authority("127.0.0.1:9").unwrap(), "127.0.0.1:9");
        assert!(authority("https://x:1").is_err());
        assert!(authority("http://x:1/v1").is_err());
    }
}
