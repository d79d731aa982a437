//! A fault-injecting TCP proxy between a device (or any client) and NATS.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways.
    Forward,
    /// Current connections were closed; new ones are accepted and held silent.
    Cut,
    /// Current and new connections are held open but nothing is forwarded.
    Blackhole,
}

/// A TCP proxy on `127.0.0.1:<free port>` that forwards to an upstream
/// address until told to cut the line. Runs as tokio tasks; stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (forwarding). Panics if it cannot bind.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy to 127.0.0.1:0");
        let addr = listener.local_addr().expect("the proxy's address");
        let (mode, _) = watch::channel(ProxyMode::Forward);
        let accept = tokio::spawn(accept_loop(listener, upstream, mode.clone()));
        FaultProxy {
            addr,
            upstream,
            mode,
            accept,
        }
    }

    /// `nats://127.0.0.1:<proxy port>`: give this to the client instead of the
    /// server's URL.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Cuts the line: closes every current connection and from now on accepts
    /// new ones but forwards nothing (the client sees silence, not a reset).
    /// No byte is forwarded after this returns.
    pub fn cut(&self) {
        self.mode.send_replace(ProxyMode::Cut);
    }

    /// Silences the line without closing anything: current and new connections
    /// stay open but nothing is forwarded either way, so clients only notice
    /// through their own timeouts. No byte is forwarded after this returns.
    pub fn blackhole(&self) {
        self.mode.send_replace(ProxyMode::Blackhole);
    }

    /// Forwards again. Connections held silent during a cut or blackhole are
    /// closed (their protocol state is lost), so clients reconnect afresh.
    pub fn heal(&self) {
        self.mode.send_replace(ProxyMode::Forward);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Dropping `mode` (the sender) ends every connection task.
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Sender<ProxyMode>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of file descriptors or the like: do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let mut rx = mode.subscribe();
        let now = *rx.borrow_and_update();
        tokio::spawn(async move {
            if now != ProxyMode::Forward {
                hold_silent(rx).await;
                drop(client);
                return;
            }
            let connect =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream));
            let Ok(Ok(server)) = connect.await else {
                return; // drops the client: upstream is down
            };
            let _ = server.set_nodelay(true);
            pump(client, server, rx).await;
        });
    }
}

/// Keeps the connection(s) owned by the caller open, forwarding nothing, until
/// the proxy forwards again or is dropped.
async fn hold_silent(mut rx: watch::Receiver<ProxyMode>) {
    let _ = rx.wait_for(|m| *m == ProxyMode::Forward).await;
}

/// Forwards both ways until either side closes or the mode changes.
async fn pump(client: TcpStream, server: TcpStream, mut rx: watch::Receiver<ProxyMode>) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            biased;
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = client_rd.read(&mut up) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if *rx.borrow() == ProxyMode::Forward
                    && server_wr.write_all(&up[..n]).await.is_err()
                {
                    return;
                }
            }
            read = server_rd.read(&mut down) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if *rx.borrow() == ProxyMode::Forward
                    && client_wr.write_all(&down[..n]).await.is_err()
                {
                    return;
                }
            }
        }
        let mode = *rx.borrow_and_update();
        match mode {
            ProxyMode::Forward => {}
            // Dropping the halves closes both connections.
            ProxyMode::Cut => return,
            ProxyMode::Blackhole => {
                // Keep both sides open and silent until healed, then close.
                hold_silent(rx).await;
                drop((client_rd, client_wr, server_rd, server_wr));
                return;
            }
        }
    }
}
