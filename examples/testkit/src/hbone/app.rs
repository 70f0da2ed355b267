//! The TCP app behind a destination ztunnel: echo (every byte back, then FIN after the
//! client's FIN) or speak first (a greeting and FIN at once, then read to EOF), so a test can
//! prove half-close in each direction on its own. Records what each connection received.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub enum AppMode {
    Echo,
    SpeakFirst(Vec<u8>),
}

/// One accepted connection: bytes received, and how it ended once it has.
#[derive(Debug, Clone, Default)]
pub struct AppConn {
    pub received: u64,
    /// `Some(Ok)` after a clean EOF from the peer, `Some(Err)` after an I/O error.
    pub ended: Option<Result<(), String>>,
}

pub struct TestApp {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<AppConn>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestApp {
    pub async fn echo() -> std::io::Result<TestApp> {
        TestApp::start(AppMode::Echo).await
    }

    pub async fn start(mode: AppMode) -> std::io::Result<TestApp> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<AppConn>>> = Arc::default();
        let shared = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let idx = {
                    let mut c = shared.lock().unwrap_or_else(|p| p.into_inner());
                    c.push(AppConn::default());
                    c.len() - 1
                };
                let (shared, mode) = (shared.clone(), mode.clone());
                tokio::spawn(async move {
                    let res = serve(tcp, &mode, &shared, idx).await;
                    let mut c = shared.lock().unwrap_or_else(|p| p.into_inner());
                    c[idx].ended = Some(res.map_err(|e| e.to_string()));
                });
            }
        });
        Ok(TestApp { addr, conns, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every connection so far, in accept order.
    pub fn conns(&self) -> Vec<AppConn> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut tcp: TcpStream,
    mode: &AppMode,
    conns: &Mutex<Vec<AppConn>>,
    idx: usize,
) -> std::io::Result<()> {
    if let AppMode::SpeakFirst(greeting) = mode {
        tcp.write_all(greeting).await?;
        tcp.shutdown().await?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        conns.lock().unwrap_or_else(|p| p.into_inner())[idx].received += n as u64;
        if let AppMode::Echo = mode {
            tcp.write_all(&buf[..n]).await?;
        }
    }
    if let AppMode::Echo = mode {
        tcp.shutdown().await?;
    }
    Ok(())
}
