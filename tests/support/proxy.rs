//! A loopback TCP proxy in front of the object store, that the test can switch off.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A loopback TCP proxy that can be switched off: connections are then accepted and closed at
/// once, and those open are cut, as when an object store goes away.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<(u64, TcpStream)>>>,
    pub refused: Arc<AtomicU64>,
    /// While set, each request is answered `403 Forbidden` (a store that refuses writes).
    forbidding: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            up: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
            refused: Arc::default(),
            forbidding: Arc::default(),
        };
        let (up, stop, conns, refused) = (
            proxy.up.clone(),
            proxy.stop.clone(),
            proxy.conns.clone(),
            proxy.refused.clone(),
        );
        let forbidding = proxy.forbidding.clone();
        std::thread::spawn(move || {
            let mut next = 0u64;
            // Ends when the proxy is dropped.
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if !up.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                if forbidding.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    forbid(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue;
                };
                next += 1;
                conns
                    .lock()
                    .unwrap()
                    .push((next, client.try_clone().unwrap()));
                pump(next, client, server, conns.clone());
            }
        });
        proxy
    }

    /// Starts a proxy in front of `cluster`'s object store and points the cluster (its
    /// children, and the test's own reads) at it.
    pub fn in_front_of_store(cluster: &mut crate::support::cluster::Cluster) -> Self {
        let target: SocketAddr = cluster
            .s3
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("the test S3 endpoint is http://127.0.0.1:PORT");
        let proxy = Self::start(target);
        cluster.s3.endpoint = format!("http://{}", proxy.addr);
        proxy
    }

    /// Switches the store on or off; off also cuts every open connection.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for (_, c) in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Proxy {
    /// Answers every request `403 Forbidden` (not retried by the store client, unlike a
    /// connection refused) while `on`; open connections are cut so none slips past.
    pub fn set_forbidding(&self, on: bool) {
        self.forbidding.store(on, Ordering::SeqCst);
        if on {
            for (_, c) in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Reads what comes within a moment, answers 403 and closes.
fn forbid(mut client: TcpStream) {
    std::thread::spawn(move || {
        let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 16 * 1024];
        let _ = client.read(&mut buf);
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = client.shutdown(Shutdown::Both);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_up(false);
    }
}

/// Copies both ways until either side closes, then closes both.
fn pump(id: u64, client: TcpStream, server: TcpStream, conns: Arc<Mutex<Vec<(u64, TcpStream)>>>) {
    let pairs = [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server, client),
    ];
    for (mut from, mut to) in pairs {
        let conns = conns.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) if to.write_all(&buf[..k]).is_err() => break,
                    Ok(_) => {}
                }
            }
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            conns.lock().unwrap().retain(|(c, _)| *c != id);
        });
    }
}
