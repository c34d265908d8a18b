//! `funkrec healthcheck [URL]`: one plain HTTP/1.0 GET of /healthz, for the container HEALTHCHECK.

use crate::config::Settings;
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// `funkrec healthcheck [URL] [--config FILE]`: GET `URL`, by default the
/// configured server's `/healthz` (`server.bind`, with 0.0.0.0/:: probed on
/// loopback), with plain HTTP/1.0 over a TCP socket; Ok only for a 2xx answer.
/// For the container HEALTHCHECK (the runtime image has no curl).
pub fn healthcheck_command(
    url: Option<String>,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let url = match url {
        Some(u) => u,
        None => healthz_url(&Settings::load(config_file.as_deref())?.server.bind)?,
    };
    probe(&url)
}

/// `http://HOST:PORT/healthz` for a bind address; wildcard hosts become loopback.
pub fn healthz_url(bind: &str) -> anyhow::Result<String> {
    let addr: std::net::SocketAddr = bind
        .parse()
        .with_context(|| format!("server.bind {bind:?} is not HOST:PORT"))?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Ok(format!("http://{host}:{}/healthz", addr.port()))
}

/// One HTTP/1.0 GET; Ok for a 2xx status.
fn probe(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("only http:// URLs are supported, got {url:?}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {hostport}"))?;
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut resp = Vec::new();
    s.take(64 * 1024).read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let status_line = text.lines().next().unwrap_or("");
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in answer {status_line:?}"))?;
    if !(200..300).contains(&code) {
        bail!("{url} answered {status_line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_url_from_bind() {
        assert_eq!(
            healthz_url("0.0.0.0:8080").unwrap(),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            healthz_url("127.0.0.1:9").unwrap(),
            "http://127.0.0.1:9/healthz"
        );
        assert_eq!(healthz_url("[::]:80").unwrap(), "http://[::1]:80/healthz");
        assert!(healthz_url("localhost").is_err());
    }

    #[test]
    fn probe_refuses_other_schemes_and_closed_ports() {
        assert!(probe("https://127.0.0.1:1/healthz").is_err());
        // port 1 on loopback: nothing listens there
        assert!(probe("http://127.0.0.1:1/healthz").is_err());
    }
}
