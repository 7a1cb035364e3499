//! [`GatewayConnection`]: a connected gateway, plain or TLS, that the app reads and
//! writes through, or whose socket it takes (plain only) for its own I/O.

use std::sync::Arc;
use std::time::Duration;

use httpdns_client as sdk;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::error::io_error;
use crate::error::SdkError;
use crate::info::GatewayInfo;
use crate::runtime::on_rt;

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A connected gateway. Read and write it (concurrently is fine), or take its file
/// descriptor (plain TCP only) and do the I/O in the app.
#[derive(uniffi::Object)]
pub struct GatewayConnection {
    pub(crate) gateway: sdk::Gateway,
    heartbeat: Duration,
    alpn: Option<String>,
    pub(crate) is_tls: bool,
    reader: tokio::sync::Mutex<Option<Reader>>,
    writer: tokio::sync::Mutex<Option<Writer>>,
}

enum Reader {
    Tcp(ReadHalf<TcpStream>),
    Tls(ReadHalf<Tls>),
}

enum Writer {
    Tcp(WriteHalf<TcpStream>),
    Tls(WriteHalf<Tls>),
}

impl GatewayConnection {
    pub(crate) fn tcp(c: sdk::Connection) -> Arc<GatewayConnection> {
        let (r, w) = tokio::io::split(c.stream);
        GatewayConnection::new(c.gateway, c.heartbeat, None, Reader::Tcp(r), Writer::Tcp(w))
    }

    pub(crate) fn tls(c: sdk::TlsConnection) -> Arc<GatewayConnection> {
        let alpn = c.alpn().map(|p| String::from_utf8_lossy(p).into_owned());
        let (r, w) = tokio::io::split(c.stream);
        GatewayConnection::new(c.gateway, c.heartbeat, alpn, Reader::Tls(r), Writer::Tls(w))
    }

    fn new(
        gateway: sdk::Gateway,
        heartbeat: Duration,
        alpn: Option<String>,
        reader: Reader,
        writer: Writer,
    ) -> Arc<GatewayConnection> {
        let is_tls = matches!(reader, Reader::Tls(_));
        Arc::new(GatewayConnection {
            gateway,
            heartbeat,
            alpn,
            is_tls,
            reader: tokio::sync::Mutex::new(Some(reader)),
            writer: tokio::sync::Mutex::new(Some(writer)),
        })
    }
}

fn closed() -> SdkError {
    SdkError::Io {
        detail: "the connection is closed".into(),
        causes: Vec::new(),
        retry_after_ms: None,
    }
}

#[uniffi::export]
impl GatewayConnection {
    /// The gateway reached.
    pub fn gateway(&self) -> GatewayInfo {
        GatewayInfo::from(&self.gateway)
    }

    /// The heartbeat interval the router set, ms.
    pub fn heartbeat_ms(&self) -> u64 {
        self.heartbeat.as_millis() as u64
    }

    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        self.is_tls
    }

    /// The ALPN protocol the gateway chose (TLS only).
    pub fn alpn(&self) -> Option<String> {
        self.alpn.clone()
    }

    /// Up to `max` bytes; empty when the gateway closed the connection.
    pub async fn read(self: Arc<Self>, max: u32) -> Result<Vec<u8>, SdkError> {
        on_rt(async move {
            let mut guard = self.reader.lock().await;
            let mut buf = vec![0u8; max.clamp(1, 1 << 20) as usize];
            let n = match guard.as_mut().ok_or_else(closed)? {
                Reader::Tcp(r) => r.read(&mut buf).await,
                Reader::Tls(r) => r.read(&mut buf).await,
            }
            .map_err(|e| io_error("read", e))?;
            buf.truncate(n);
            Ok(buf)
        })
        .await
    }

    /// Writes all of `data`.
    pub async fn write(self: Arc<Self>, data: Vec<u8>) -> Result<(), SdkError> {
        on_rt(async move {
            let mut guard = self.writer.lock().await;
            match guard.as_mut().ok_or_else(closed)? {
                Writer::Tcp(w) => w.write_all(&data).await,
                Writer::Tls(w) => w.write_all(&data).await,
            }
            .map_err(|e| io_error("write", e))
        })
        .await
    }

    /// Closes the connection (a TLS close_notify first). Named `shutdown`, not
    /// `close`, which Kotlin's `AutoCloseable` takes for freeing the object.
    pub async fn shutdown(self: Arc<Self>) {
        let _ = on_rt(async move {
            if let Some(mut w) = self.writer.lock().await.take() {
                let _ = match &mut w {
                    Writer::Tcp(w) => w.shutdown().await,
                    Writer::Tls(w) => w.shutdown().await,
                };
            }
            self.reader.lock().await.take();
            Ok(())
        })
        .await;
    }

    /// Hands the socket to the app: its file descriptor, in blocking mode, which the
    /// app now owns and must close. Plain TCP only (a TLS session lives in this
    /// library); the connection object is shut down afterwards.
    pub fn take_fd(&self) -> Result<i32, SdkError> {
        #[cfg(unix)]
        {
            use std::os::fd::IntoRawFd;
            if self.is_tls {
                return Err(SdkError::Io {
                    detail: "a TLS connection has no file descriptor to give: read and write it through this object".into(),
                    causes: Vec::new(),
                    retry_after_ms: None,
                });
            }
            let reader = self.reader.blocking_lock().take().ok_or_else(closed)?;
            let writer = self.writer.blocking_lock().take().ok_or_else(closed)?;
            let (Reader::Tcp(r), Writer::Tcp(w)) = (reader, writer) else {
                return Err(closed());
            };
            let std = r
                .unsplit(w)
                .into_std()
                .map_err(|e| io_error("take_fd", e))?;
            std.set_nonblocking(false)
                .map_err(|e| io_error("take_fd", e))?;
            Ok(std.into_raw_fd())
        }
        #[cfg(not(unix))]
        Err(SdkError::Io {
            detail: "file descriptors exist on Unix only".into(),
            causes: Vec::new(),
            retry_after_ms: None,
        })
    }
}
