//! A virtual IP in front of server replicas, as a Kubernetes Service gives them: each new
//! connection goes to the next replica that accepts it; a connection ends with its
//! replica.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The address, and the replicas behind it.
pub struct Vip {
    pub addr: SocketAddr,
}

/// Balances connections to `addr` over `backends`, round robin, skipping replicas that
/// refuse.
pub async fn vip(backends: Vec<SocketAddr>) -> Vip {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let backends = backends.clone();
            let next = next.clone();
            tokio::spawn(async move {
                for _ in 0..backends.len() {
                    let backend = backends[next.fetch_add(1, Ordering::SeqCst) % backends.len()];
                    let connect = TcpStream::connect(backend);
                    if let Ok(Ok(mut server)) =
                        tokio::time::timeout(Duration::from_secs(1), connect).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    Vip { addr }
}
