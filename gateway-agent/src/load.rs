//! Where the connection count comes from: a constant, a file, the kernel's socket
//! table, or a JSON endpoint of the gateway. An embedding gateway sets it directly.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A way to learn the gateway's live connection count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadSource {
    /// A fixed number (tests, or a gateway that sets it through the library API).
    Static(u64),
    /// A decimal integer read from a file the gateway rewrites.
    File(PathBuf),
    /// ESTABLISHED sockets whose local port is this one, IPv4 and IPv6.
    TcpPort(u16),
    /// A number at a JSON pointer in the answer of an HTTP GET.
    HttpJson {
        /// The URL to GET.
        url: String,
        /// RFC 6901 pointer to the number (empty for the whole document).
        pointer: String,
    },
}

impl FromStr for LoadSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, arg) = s.split_once(':').ok_or_else(|| {
            format!("load source {s:?} is not KIND:ARG (static, file, tcp-port, http-json)")
        })?;
        match kind {
            "static" => arg
                .parse()
                .map(LoadSource::Static)
                .map_err(|_| format!("static:{arg}: not a non-negative integer")),
            "file" if !arg.is_empty() => Ok(LoadSource::File(arg.into())),
            "tcp-port" => match arg.parse::<u16>() {
                Ok(p) if p > 0 => Ok(LoadSource::TcpPort(p)),
                _ => Err(format!("tcp-port:{arg}: not a port 1-65535")),
            },
            "http-json" => {
                let (url, pointer) = arg.rsplit_once('#').unwrap_or((arg, ""));
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("http-json:{arg}: URL must start with http:// or https://"));
                }
                if !pointer.is_empty() && !pointer.starts_with('/') {
                    return Err(format!("http-json:{arg}: JSON pointer must start with '/'"));
                }
                Ok(LoadSource::HttpJson {
                    url: url.to_string(),
                    pointer: pointer.to_string(),
                })
            }
            _ => Err(format!(
                "load source {s:?}: expected static:N, file:PATH, tcp-port:PORT or http-json:URL#/pointer"
            )),
        }
    }
}

/// Why a sample failed; the agent keeps the last good count and retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file or socket table could not be read.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The content was not a count.
    #[error("{0}")]
    Parse(String),
    /// The HTTP source failed.
    #[error("http load source: {0}")]
    Http(String),
}

/// Counts ESTABLISHED (`st` = 01) sockets with local port `port` in the text of
/// `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn count_established(proc_net_tcp: &str, port: u16) -> u64 {
    proc_net_tcp
        .lines()
        .skip(1)
        .filter(|line| {
            let mut cols = line.split_whitespace();
            let (Some(_sl), Some(local), Some(_remote), Some(st)) =
                (cols.next(), cols.next(), cols.next(), cols.next())
            else {
                return false;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            st == "01" && local_port == Some(port)
        })
        .count() as u64
}

impl LoadSource {
    /// Reads the current count.
    pub async fn sample(&self, http: &reqwest::Client) -> Result<u64, LoadError> {
        match self {
            LoadSource::Static(n) => Ok(*n),
            LoadSource::File(path) => {
                let text =
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|source| LoadError::Io {
                            what: path.display().to_string(),
                            source,
                        })?;
                text.trim().parse().map_err(|_| {
                    LoadError::Parse(format!(
                        "{}: {:?} is not a non-negative integer",
                        path.display(),
                        text.trim()
                    ))
                })
            }
            LoadSource::TcpPort(port) => {
                let mut total = 0;
                for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                    match tokio::fs::read_to_string(table).await {
                        Ok(text) => total += count_established(&text, *port),
                        // A kernel without IPv6 has no tcp6 table; that is zero sockets.
                        Err(e)
                            if e.kind() == std::io::ErrorKind::NotFound && table.ends_with('6') => {
                        }
                        Err(source) => {
                            return Err(LoadError::Io {
                                what: table.into(),
                                source,
                            })
                        }
                    }
                }
                Ok(total)
            }
            LoadSource::HttpJson { url, pointer } => {
                let resp = http
                    .get(url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| LoadError::Http(e.to_string()))?;
                let doc: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| LoadError::Http(format!("{url}: body is not JSON: {e}")))?;
                let v = doc
                    .pointer(pointer)
                    .ok_or_else(|| LoadError::Parse(format!("{url}: nothing at {pointer:?}")))?;
                v.as_u64()
                    .or_else(|| {
                        v.as_f64()
                            .filter(|f| *f >= 0.0 && f.is_finite())
                            .map(|f| f as u64)
                    })
                    .ok_or_else(|| {
                        LoadError::Parse(format!(
                            "{url}#{pointer}: {v} is not a non-negative number"
                        ))
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("static:5".parse(), Ok(LoadSource::Static(5)));
        assert_eq!("tcp-port:8000".parse(), Ok(LoadSource::TcpPort(8000)));
        assert_eq!(
            "http-json:http://h:1/stats#/conns/total".parse(),
            Ok(LoadSource::HttpJson {
                url: "http://h:1/stats".into(),
                pointer: "/conns/total".into()
            })
        );
        for bad in [
            "static:-1",
            "tcp-port:0",
            "tcp-port:x",
            "file:",
            "http-json:ftp://x",
            "nope",
            "x:y",
        ] {
            assert!(bad.parse::<LoadSource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_established_sockets_on_the_port() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F40 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:D2F0 0100007F:1F40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:1F40 0100007F:D2F2 06 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1";
        assert_eq!(count_established(v4, 8000), 1);
        let v6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1F40 00000000000000000000000001000000:A000 01 0";
        assert_eq!(count_established(v6, 8000), 1);
        assert_eq!(count_established("garbage\nmore garbage", 8000), 0);
    }
}
