//! A TCP proxy that can cut a real server off: every open connection is dropped and new
//! ones are closed at once until it is restored. From the client's side this is the server
//! going down (and coming back on the same address), without owning the server's process.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The proxy; it stops serving when dropped.
pub struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Option<CancellationToken>>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on a loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let links = Arc::new(Mutex::new(Some(CancellationToken::new())));
        let stop = CancellationToken::new();
        let upstream = upstream.to_owned();
        tokio::spawn({
            let (links, stop) = (Arc::clone(&links), stop.clone());
            async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        () = stop.cancelled() => return,
                    };
                    let Ok((mut client, _)) = accepted else { continue };
                    // Cut: the connection is closed as soon as it is accepted.
                    let Some(link) = links.lock().expect("proxy state").as_ref().map(CancellationToken::child_token) else {
                        continue;
                    };
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            () = link.cancelled() => {}
                        }
                    });
                }
            }
        });
        Proxy { addr, links, stop }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        if let Some(t) = self.links.lock().expect("proxy state").take() {
            t.cancel();
        }
    }

    /// Forwards again.
    pub fn restore(&self) {
        let mut links = self.links.lock().expect("proxy state");
        if links.is_none() {
            *links = Some(CancellationToken::new());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}
